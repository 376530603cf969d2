"""The answers sozu gives itself, when no backend answer can be forwarded (pure).

Every one carries `Connection: close` and a short body saying what happened, so that a user
looking at a curl output or a browser understands, and the connection is closed after it: after
an error we no longer trust where the next request would start.
"""
from __future__ import annotations

import functools

REASONS = {
    301: "Moved Permanently",
    302: "Found",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    413: "Payload Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

EXPLANATIONS = {
    400: "The request could not be understood by the proxy.",
    404: "No application is configured for this host and path.",
    408: "The request was not received in time.",
    413: "The request body is too large.",
    414: "The request line is too long.",
    431: "The request header section is too large.",
    500: "The proxy failed while handling this request.",
    501: "The proxy does not implement what the request asks for.",
    502: "The backend answered with an invalid or incomplete response.",
    503: "No backend server is available to answer this request.",
    504: "The backend server did not answer in time.",
    505: "This HTTP version is not supported.",
}


def default_answer(status: int, detail: str = "", extra_headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    reason = REASONS.get(status, "Error")
    body = f"{status} {reason}\n{EXPLANATIONS.get(status, '')}\n"
    if detail:
        body += detail + "\n"
    data = body.encode("utf-8", "replace")
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(data)}", "Cache-Control: no-cache", "Connection: close"]
    head += [f"{name}: {value}" for name, value in extra_headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data


# --- custom answers ------------------------------------------------------------------------
#
# A listener or an application may replace the answers for these statuses with its own raw
# HTTP answers (docs/routing.md), templates with a few variables. The text is checked when the
# order arrives (`check`); its parsed form is cached by text (`template`), so a worker parses
# each distinct answer once. The head is normalised to CRLF lines; its Content-Length,
# Transfer-Encoding and Connection lines are replaced: the body's length is counted after the
# variables are filled in, and the connection is closed after the answer.

CUSTOM_STATUSES = (400, 404, 408, 413, 502, 503, 504)
VARIABLES = ("%REQUEST_ID", "%ROUTE", "%STATUS", "%MESSAGE")
_REPLACED = frozenset(("content-length", "transfer-encoding", "connection"))
_SAMPLE = (b"0123456789ab-0", "app", 503, "No backend server is available.")


class Template:
    """A custom answer: head lines and body, with their variables still in."""

    __slots__ = ("head", "body", "variables")

    def __init__(self, text: str):
        head, _, body = text.replace("\r\n", "\n").partition("\n\n")
        lines = [line for line in head.split("\n")
                 if line.partition(":")[0].strip().lower() not in _REPLACED]
        self.head = "\r\n".join(lines)
        self.body = body
        self.variables = any(name in text for name in VARIABLES)

    def render(self, request_id: bytes, route: str, status: int, message: str) -> bytes:
        head, body = self.head, self.body
        if self.variables:
            # Nothing a client sent reaches a template but the request id sozu made and the
            # route it chose; the message loses line breaks so the head stays one line each.
            values = (("%REQUEST_ID", request_id.decode("ascii")), ("%ROUTE", route),
                      ("%STATUS", str(status)),
                      ("%MESSAGE", " ".join(message.split()).replace("&", "&amp;")
                       .replace("<", "&lt;").replace(">", "&gt;")))
            for name, value in values:
                head, body = head.replace(name, value), body.replace(name, value)
        data = body.encode("utf-8")
        return (head.encode("utf-8") + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % len(data) + data)


@functools.lru_cache(maxsize=1024)
def template(text: str) -> Template:
    return Template(text)


def check(text: str) -> None:
    """ValueError saying why `text` is not a usable HTTP answer: its head (with the variables
    filled in) must parse as a response head, with a status of 200 or more."""
    from sozu.http.parser import ProtocolError, parse_response_head
    if "\n\n" not in text.replace("\r\n", "\n"):
        raise ValueError("no empty line after its head (status line, headers, empty line, body)")
    try:
        parsed = parse_response_head(Template(text).render(*_SAMPLE), b"GET")
    except ProtocolError as error:
        raise ValueError(error.message) from None
    if parsed is None:
        raise ValueError("an incomplete head")
    if parsed[0].status < 200:
        raise ValueError(f"an informational status ({parsed[0].status}) is no answer")


def redirect_answer(location: bytes, status: int = 301) -> bytes:
    line = b"%d %s" % (status, REASONS[status].encode("ascii"))
    body = line + b"\n" + location + b"\n"
    return (b"HTTP/1.1 " + line + b"\r\nLocation: " + location +
            b"\r\nContent-Type: text/plain\r\nContent-Length: " + str(len(body)).encode() +
            b"\r\nConnection: close\r\n\r\n" + body)


# Prebuilt: these are answered under load and must cost nothing to produce.
OVER_CAPACITY = default_answer(503, "The proxy is at its connection limit; retry shortly.",
                               (("Retry-After", "1"),))
