"""The answers sozu gives itself, when no backend answer can be forwarded (pure).

Every one carries `Connection: close` and a short body saying what happened, so that a user
looking at a curl output or a browser understands, and the connection is closed after it: after
an error we no longer trust where the next request would start.
"""
from __future__ import annotations

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


def custom_answer(text: str) -> bytes:
    """A listener's or application's answer file: raw HTTP, normalised to CRLF line endings in
    its head, its Connection header replaced by `Connection: close` (the connection is closed
    after it, and the client must know not to send another request)."""
    head, sep, body = text.replace("\r\n", "\n").partition("\n\n")
    lines = [line for line in head.split("\n") if line.partition(":")[0].strip().lower() != "connection"]
    lines.append("Connection: close")
    return "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n" + body.encode("utf-8")


def redirect_answer(location: bytes, status: int = 301) -> bytes:
    line = b"%d %s" % (status, REASONS[status].encode("ascii"))
    body = line + b"\n" + location + b"\n"
    return (b"HTTP/1.1 " + line + b"\r\nLocation: " + location +
            b"\r\nContent-Type: text/plain\r\nContent-Length: " + str(len(body)).encode() +
            b"\r\nConnection: close\r\n\r\n" + body)


# Prebuilt: these are answered under load and must cost nothing to produce.
OVER_CAPACITY = default_answer(503, "The proxy is at its connection limit; retry shortly.",
                               (("Retry-After", "1"),))
