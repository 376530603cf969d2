"""Strict, sans-IO HTTP/1.1 message heads (read by llhttp) and chunked framing.

Theory of operation
-------------------
The proxy session owns the socket and a bytearray of what it has received. It calls
``parse_request_head(buf)`` (or ``parse_response_head``) after every read: ``None`` means "read
more", ``(head, n)`` means the head is the first ``n`` bytes of ``buf``, anything wrong raises
``ProtocolError`` carrying the status to answer. A chunked body is then streamed through a
``ChunkedFramer``, which checks the framing and says where the body ends; the bytes are
forwarded unchanged, or decoded (the framer says where the chunk data lies) for a client that
knows no chunks. Nothing here reads a clock, a socket or a logger.

Why strict: a proxy and the backend behind it must agree on where every message ends. Whenever
the proxy accepts something that the backend reads differently (a bare LF, an obs-fold, a
``Transfer-Encoding`` it does not understand, two ``Content-Length`` values, whitespace before
a colon) an attacker can hide a second request inside the first one (request smuggling, see
Kettle's "HTTP Desync Attacks"). So what is accepted is the RFC 9112 grammar, CRLF line endings
only, and every ambiguous framing is refused instead of guessed:

* request line ``METHOD SP target SP HTTP/1.x``; origin-form, absolute-form (http/https) or
  ``*`` for OPTIONS; HTTP/1.0 and HTTP/1.1 only;
* field lines ``token ":" OWS value OWS``; no obs-fold, no CTL but HTAB, obs-text allowed in
  values only;
* ``Content-Length`` plain digits (identical duplicates tolerated); ``Transfer-Encoding`` of a
  request exactly ``chunked``; never both; exactly one valid ``Host`` in HTTP/1.1.

Who checks what, once a head is complete (its CRLF CRLF found by one search):

* llhttp (Node's parser, through httptools: C) checks it: the grammar of its lines,
  Content-Length and Transfer-Encoding. It hands over nothing: the field lines are forwarded as
  they came, never split and rebuilt (sozu.http.headers), and the (name, value) pairs are split
  from them only for the few heads that need them (header rules, a sticky cookie, a Connection
  header naming other headers).
* sozu's own checks cover where llhttp is more lenient than the contract, at C speed: the
  request or status line by one regex (single spaces, the version, then the target forms: no
  fragment, no CONNECT, no userinfo), the limits by counting, and the few headers the parser
  interprets (Host, Content-Length, Transfer-Encoding, Connection, Expect, Upgrade, and the
  underscore spellings it refuses) found by one regex search over the head, then checked by
  the rules of RFC 9110/9112 in Python.
* a head llhttp refuses is judged by the contract: its field grammar (one regex) and, on a
  fault, a line-by-line diagnosis that names it in the corpus' words; then sozu's own checks,
  which name framing and Host faults. What llhttp refused for reasons of its own stays refused
  (400, or 502 for a response) unless sozu decides it by its own checks: a method outside
  llhttp's table (RFC 9110 §9.1 allows any token), identical or listed Content-Length values
  (RFC 9110 §8.6), OWS after a transfer coding. Only refused or unusual heads take that path.

Limits are checked while the head is still incomplete (counts over the recent bytes, one regex
over the start of the request line), so a client cannot make the proxy buffer forever.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from httptools import (HttpParserError, HttpParserInvalidMethodError, HttpParserUpgrade, HttpRequestParser,
                       HttpResponseParser)

__all__ = [
    "DEFAULT_LIMITS", "ChunkedFramer", "Limits", "ProtocolError", "RequestHead",
    "ResponseHead", "parse_request_head", "parse_response_head",
]


class ProtocolError(Exception):
    """A message that breaks the protocol. status_hint is the HTTP status to answer (h11 style)."""

    def __init__(self, message: str, status_hint: int = 400):
        super().__init__(message)
        self.message = message
        self.status_hint = status_hint

    def __repr__(self) -> str:
        return f"ProtocolError({self.message!r}, status_hint={self.status_hint})"


@dataclass(frozen=True)
class Limits:
    max_request_line: int = 8192  # longer -> 414 (status line of a response: 502)
    max_header_count: int = 100  # more field lines -> 431
    max_head_size: int = 32768  # whole head incl. request line -> 431 (for responses: 502)
    max_chunk_line: int = 4096  # chunk-size line with its extensions, CRLF excluded


DEFAULT_LIMITS = Limits()



@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    version: bytes
    # The field lines as received, each with its CRLF: forwarded as they came (sozu.http.headers).
    # None once a front edited the headers (sozu.http.rules): they are edited_headers then.
    fields: bytes | None
    host: str
    path: bytes
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool
    upgrade: bytes | None
    connection_tokens: frozenset[bytes]
    edited_headers: list[tuple[bytes, bytes]] | None = None
    split_fields: list[tuple[bytes, bytes]] | None = None  # `headers`, once asked for

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """[(name, stripped value)], split from fields on demand (few requests need them), once:
        a sticky request reads them twice. Not to be changed in place."""
        if self.fields is None:
            return self.edited_headers
        if self.split_fields is None:
            self.split_fields = _split_fields(self.fields)
        return self.split_fields


@dataclass(slots=True)
class ResponseHead:
    version: bytes
    status: int
    reason: bytes
    fields: bytes  # the field lines as received, each with its CRLF: forwarded, not re-split
    content_length: int | None
    chunked: bool  # True exactly when body == "chunked"
    keep_alive: bool
    connection_tokens: frozenset[bytes]
    body: str  # "none" | "length" | "chunked" | "close"

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """[(name, stripped value)], split from fields on demand."""
        return _split_fields(self.fields)


# --- grammar (RFC 9110 §5.6.2, RFC 9112 §3, §4, §5, §7.1) ------------------------------------

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_VALUE_CHAR = rb"\t\x20-\x7e\x80-\xff"  # HTAB, SP, VCHAR, obs-text
_TOKEN = re.compile(rb"[%s]+" % _TCHAR)
_REQUEST_LINE = re.compile(rb"([%s]+) ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])" % _TCHAR)
# What a request line can start like; anything else can be refused before its CRLF arrives.
_REQUEST_LINE_PREFIX = re.compile(
    rb"\r|[%s]*(?: (?:[\x21-\x7e]+(?: [HTP/.0-9]{0,8}\r?)?)?)?" % _TCHAR
)
_STATUS_LINE = re.compile(rb"(HTTP/[0-9]\.[0-9]) ([0-9]{3})(?: ([%s]*))?" % _VALUE_CHAR)
_FIELD_BLOCK = re.compile(rb"(?:[%s]+:[%s]*\r\n)*" % (_TCHAR, _VALUE_CHAR))
_FIELD_LINE = re.compile(rb"[%s]+:[%s]*" % (_TCHAR, _VALUE_CHAR))
_DIGITS = re.compile(rb"[0-9]{1,18}")
_ABSOLUTE_FORM = re.compile(rb"([Hh][Tt][Tt][Pp][Ss]?)://([^/?#]*)([^?#]*)(\?[^#]*)?")
_HOST = re.compile(
    rb"((?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?"
)
_CHUNK_LINE = re.compile(
    rb'([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*[%s]+(?:[ \t]*=[ \t]*(?:[%s]+|"(?:[\t !#-\[\]-~\x80-\xff]'
    rb'|\\[\t\x20-\x7e\x80-\xff])*"))?)*' % (_TCHAR, _TCHAR)
)
_HEX_PREFIX = re.compile(rb"[0-9A-Fa-f]*")
_VCHARS = re.compile(rb"[\x21-\x7e]+")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

_NO_TOKENS: frozenset[bytes] = frozenset()
_EARLY_WINDOW = 2048  # bytes of an incomplete head searched for bare CR/LF on each call
_MAX_EMPTY_LINES = 8  # tolerated before a request line (RFC 9112 §2.2)
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_KNOWN_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")

# Headers the parser interprets. The underscore spellings are refused: some servers (CGI,
# WSGI environ) fold "_" and "-" together, which would let them see a framing header we ignore.
_CL, _TE, _HOST_H, _CONN, _EXPECT, _UPGRADE, _LOOKALIKE = range(7)
_TRACKED = {
    b"content-length": _CL,
    b"transfer-encoding": _TE,
    b"host": _HOST_H,
    b"connection": _CONN,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
    b"content_length": _LOOKALIKE,
    b"transfer_encoding": _LOOKALIKE,
}


# --- request ----------------------------------------------------------------------------------


def parse_request_head(
    buf: bytes | bytearray, limits: Limits = DEFAULT_LIMITS
) -> tuple[RequestHead, int] | None:
    """buf holds bytes received so far, starting where a request starts. Returns None if the head
    is not complete yet (and no limit is already exceeded), else (head, n) where n counts the
    bytes of buf the head used, including skipped leading empty lines and the final empty line.
    Raises ProtocolError.

    Stateless, so each call scans buf again (1-2 ns per buffered byte while incomplete). A head
    only completes on a LF: a caller may skip the call after a read that brought none (calling
    anyway once len(buf) passes a limit), so a head dribbled byte by byte costs no rescans."""
    start = 0
    if buf.startswith(b"\r\n"):
        while buf.startswith(b"\r\n", start):
            start += 2
            if start > 2 * _MAX_EMPTY_LINES:
                raise ProtocolError("too many empty lines before the request line")
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        _check_partial_request(buf, start, limits)
        return None
    line_end = buf.find(b"\r\n", start)
    if line_end - start > limits.max_request_line:
        raise ProtocolError("request line too long", 414)
    if end + 4 - start > limits.max_head_size:
        raise ProtocolError("request head too large", 431)
    head = bytes(buf[start : end + 4])
    line_size = line_end - start
    method, target, version, t_host, t_port, path = _parse_request_line(head[:line_size])
    fields = head[line_size + 2 : -2]
    if _too_many_fields(fields, limits):
        raise ProtocolError("too many header fields", 431)
    refusal = _check_fields(HttpRequestParser, head, fields, 400)
    found, hosts = _framing_fields(head, 400)
    http11 = version == b"HTTP/1.1"
    host = _routing_host(hosts, http11, t_host, t_port)
    content_length, chunked = _request_framing(found[_CL], found[_TE], http11)
    tokens = _connection_tokens(found[_CONN], 400)
    if http11:
        keep_alive = b"close" not in tokens
    else:
        keep_alive = b"keep-alive" in tokens and b"close" not in tokens
    # RFC 9110 §7.8 and §10.1.1: Upgrade and 100-continue are ignored in HTTP/1.0 requests.
    upgrade = found[_UPGRADE]
    if upgrade is not None:
        upgrade = upgrade.lower() if http11 and b"upgrade" in tokens else None
    expect = found[_EXPECT]
    expect_continue = (
        expect is not None and http11 and b"100-continue" in _split_list(expect.lower())
    )
    if refusal is not None:
        raise ProtocolError(f"malformed request head (llhttp: {refusal})")
    head_obj = RequestHead(
        method, target, version, fields, host, path, content_length, chunked, keep_alive,
        expect_continue, upgrade, tokens,
    )
    return head_obj, end + 4


def _routing_host(hosts: list[bytes], http11: bool, t_host, t_port) -> str:
    if len(hosts) > 1:
        raise ProtocolError("several Host headers")
    if not hosts:
        if http11:
            raise ProtocolError("HTTP/1.1 request without a Host header")
        return t_host or ""
    h_host, h_port = _parse_host(hosts[0], "Host header")
    if t_host is None:
        return h_host
    # RFC 9112 §3.2.2 has an origin server ignore Host here; a proxy refuses instead, so that
    # the backend cannot route on another host than the one we routed on.
    port, default = t_port
    if (t_host, port) != (h_host, default if h_port is None else h_port):
        raise ProtocolError("Host header does not match the absolute-form target")
    return t_host


def _request_framing(cl: bytes | None, te: bytes | None, http11: bool) -> tuple[int | None, bool]:
    """-> (content_length, chunked), RFC 9112 §6.1 and §6.3."""
    if te is None:
        return (None if cl is None else _parse_content_length(cl, 400)), False
    if cl is not None:
        raise ProtocolError("both Transfer-Encoding and Content-Length")
    if not http11:
        raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
    codings = _split_codings(te, 400)
    if codings != [b"chunked"]:
        if codings.count(b"chunked") > 1:
            raise ProtocolError("chunked applied more than once")
        if b"chunked" in codings[:-1]:
            raise ProtocolError("chunked is not the final transfer coding")
        raise ProtocolError("unsupported Transfer-Encoding", 501)
    return None, True


def _parse_request_line(line: bytes):
    """-> (method, target, version, target host, (port, default port), path); the target host
    and port are None unless the target is in absolute-form."""
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        _diagnose_request_line(line)
    method, target, version = m.groups()
    if version not in _KNOWN_VERSIONS:
        raise ProtocolError(f"unsupported HTTP version {version.decode('ascii')}", 505)
    if method == b"CONNECT":
        raise ProtocolError("CONNECT is not supported by a reverse proxy")
    if b"#" in target:
        raise ProtocolError("fragment in request target")
    first = target[0]
    if first == 0x2F:  # "/": origin-form, the overwhelming case
        q = target.find(b"?")
        return method, target, version, None, None, target if q < 0 else target[:q]
    if target == b"*":
        if method != b"OPTIONS":
            raise ProtocolError("asterisk-form target is only allowed with OPTIONS")
        return method, target, version, None, None, b"/"
    m = _ABSOLUTE_FORM.fullmatch(target)
    if m is None:
        raise ProtocolError("request target is neither origin-form nor absolute-form")
    scheme, authority, path, _query = m.groups()
    if b"@" in authority:
        raise ProtocolError("userinfo in request target")
    host, port = _parse_host(authority, "request target authority")
    default = _DEFAULT_PORTS[scheme.lower()]
    return method, target, version, host, (default if port is None else port, default), path or b"/"


def _diagnose_request_line(line: bytes, partial: bool = False) -> None:
    """Name the fault of a request line (partial: still without its CRLF) and raise."""
    if b"\n" in line:
        raise ProtocolError("bare LF line ending (CRLF required)")
    if partial and line.endswith(b"\r"):
        line = line[:-1]
    if b"\r" in line:
        raise ProtocolError("bare CR in request line")
    if line[:1] in (b" ", b"\t"):
        raise ProtocolError("whitespace before the request line")
    if b"\t" in line:
        raise ProtocolError("request line separators must be single spaces")
    parts = line.split(b" ")
    if _TOKEN.fullmatch(parts[0]) is None:
        raise ProtocolError("invalid method in request line")
    if len(parts) > 1 and parts[1] and _VCHARS.fullmatch(parts[1]) is None:
        raise ProtocolError("invalid character in request target")
    if not partial and len(parts) == 2 and parts[1]:
        raise ProtocolError("request line without HTTP version (HTTP/0.9 is not supported)")
    if len(parts) > 3 or not all(parts[:-1]) or not (partial or parts[-1]):
        raise ProtocolError("request line must be METHOD SP target SP version")
    raise ProtocolError("malformed HTTP version")


def _check_partial_request(buf, start: int, limits: Limits) -> None:
    """The head is incomplete: raise now if it can never become acceptable."""
    size = len(buf) - start
    if not size:
        return
    line_end = buf.find(b"\r\n", start)
    if line_end < 0:
        if size - buf.endswith(b"\r") > limits.max_request_line:
            raise ProtocolError("request line too long", 414)
        # A prefix of a viable prefix is viable: 64 bytes are enough to refuse garbage early.
        if _REQUEST_LINE_PREFIX.fullmatch(buf, start, start + 64) is None:
            _diagnose_request_line(bytes(buf[start:]), partial=True)
            raise ProtocolError("malformed request line")
    else:
        if line_end - start > limits.max_request_line:
            raise ProtocolError("request line too long", 414)
        # Validate now: an HTTP/0.9 client ("GET /\r\n") would otherwise wait for a timeout.
        _parse_request_line(bytes(buf[start:line_end]))
    _check_partial_head(buf, start, limits, 400, 431)


def _check_partial_head(buf, start: int, limits: Limits, hint: int, size_hint: int) -> None:
    if len(buf) - start >= limits.max_head_size:
        raise ProtocolError("head too large", size_hint)
    # Every LF ends a field line (a bare one is refused below or when the head completes).
    if buf.count(b"\n", start) > limits.max_header_count + 1:
        raise ProtocolError("too many header fields", size_hint)
    # Bare CR or LF are refused early by looking at the recent bytes only: the caller parses
    # again after every read, and a head dribbled in byte by byte must not cost a rescan of the
    # whole buffer per byte. The complete head is checked in full anyway.
    tail = max(start, len(buf) - _EARLY_WINDOW)
    if buf[tail : tail + 1] == b"\n":
        tail += 1  # its CR may lie before the window
    crlf = buf.count(b"\r\n", tail)
    if buf.count(b"\n", tail) != crlf:
        raise ProtocolError("bare LF line ending (CRLF required)", hint)
    if buf.count(b"\r", tail) - buf.endswith(b"\r") != crlf:
        raise ProtocolError("bare CR in head", hint)


# --- response ---------------------------------------------------------------------------------


def parse_response_head(
    buf: bytes | bytearray, request_method: bytes, limits: Limits = DEFAULT_LIMITS
) -> tuple[ResponseHead, int] | None:
    """Same contract as parse_request_head, for the backend's answer to request_method.
    Errors raise ProtocolError(..., status_hint=502). A 1xx head is returned like any other."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if buf[:5] != b"HTTP/"[: len(buf)]:
            raise ProtocolError("response does not start with HTTP/", 502)
        line_end = buf.find(b"\r\n")
        if (line_end if line_end >= 0 else len(buf)) > limits.max_request_line:
            raise ProtocolError("status line too long", 502)
        _check_partial_head(buf, 0, limits, 502, 502)
        return None
    line_end = buf.find(b"\r\n")
    if line_end > limits.max_request_line:
        raise ProtocolError("status line too long", 502)
    if end + 4 > limits.max_head_size:
        raise ProtocolError("response head too large", 502)
    head = bytes(buf[: end + 4])
    m = _STATUS_LINE.fullmatch(head, 0, line_end)
    if m is None:
        raise ProtocolError("malformed status line", 502)
    version, status_b, reason = m.groups()
    if version not in _KNOWN_VERSIONS:
        raise ProtocolError(f"unsupported response version {version.decode('ascii')}", 502)
    status = int(status_b)
    if status < 100 or status > 599:
        raise ProtocolError(f"status code {status} out of range", 502)
    fields = head[line_end + 2 : -2]
    if _too_many_fields(fields, limits):
        raise ProtocolError("too many header fields", 502)
    refusal = _check_fields(HttpResponseParser, head, fields, 502)
    found, _ = _framing_fields(head, 502)
    cl, te = found[_CL], found[_TE]
    if te is not None and cl is not None:
        raise ProtocolError("both Transfer-Encoding and Content-Length", 502)
    content_length = None if cl is None else _parse_content_length(cl, 502)
    codings = None if te is None else _split_codings(te, 502)
    if codings is not None and codings.count(b"chunked") > 1:
        raise ProtocolError("chunked applied more than once", 502)

    http11 = version == b"HTTP/1.1"
    tokens = _connection_tokens(found[_CONN], 502)
    keep_alive = b"close" not in tokens and (http11 or b"keep-alive" in tokens)
    if request_method == b"HEAD" or status < 200 or status == 204 or status == 304:
        body = "none"
    elif codings is not None:
        # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing: read to close.
        body = "chunked" if http11 and codings[-1] == b"chunked" else "close"
    elif content_length is not None:
        body = "length"
    else:
        body = "close"
    if body == "close":
        keep_alive = False
    if refusal is not None:
        raise ProtocolError(f"malformed response head (llhttp: {refusal})", 502)
    head_obj = ResponseHead(
        version, status, reason or b"", fields, content_length, body == "chunked",
        keep_alive, tokens, body,
    )
    return head_obj, end + 4


# --- fields -----------------------------------------------------------------------------------


class _LlhttpCallbacks:
    """The callbacks httptools looks for on a protocol object, all absent: its parser only
    checks. (Named, since httptools looks each one up, and a miss costs an AttributeError.)"""

    __slots__ = ()
    on_message_begin = on_url = on_status = on_header = on_headers_complete = None
    on_body = on_message_complete = on_chunk_header = on_chunk_complete = None


_CHECK_ONLY = _LlhttpCallbacks()


def _too_many_fields(fields: bytes, limits: Limits) -> bool:
    """More field lines (each ending with CRLF) than the limit? Each takes 3 bytes at least: only
    a longer block needs counting."""
    limit = limits.max_header_count
    return len(fields) > 3 * limit and fields.count(b"\r\n") > limit


# llhttp's reason for stopping after the head of a 101 answer without Upgrade headers (an
# upgrade to it all the same): not a refusal. (httptools passes llhttp's reasons on as text.)
_LLHTTP_PAUSED = "Pause on CONNECT/Upgrade"


def _contract_allows(refusal: HttpParserError) -> bool:
    """Is what llhttp refused one of the things sozu decides by its own checks? A method (RFC
    9110 §9.1 allows any token, llhttp knows a table of them; sozu's request line regex checked
    it), Content-Length and Transfer-Encoding (llhttp refuses identical values, RFC 9110 §8.6,
    and OWS after a coding, RFC 9110 §5.6.3; sozu's checks refuse what the contract refuses)."""
    reason = str(refusal)
    return (isinstance(refusal, HttpParserInvalidMethodError) or "Content-Length" in reason
            or "Transfer-Encoding" in reason)


def _check_fields(llhttp_parser, head: bytes, fields: bytes, hint: int) -> str | None:
    """A complete head (fields: its field lines, each ending with CRLF) checked by llhttp. When
    llhttp refuses it, the contract's grammar names the fault; if it finds none, the reason
    llhttp gave is returned (None when the contract allows what llhttp refused), for the caller
    to refuse the head with once its own checks, which name a fault better, have passed."""
    try:
        llhttp_parser(_CHECK_ONLY).feed_data(head)
    except HttpParserUpgrade:  # llhttp stops after an Upgrade head or a 101's, read whole
        pass
    except HttpParserError as refusal:
        if str(refusal) == _LLHTTP_PAUSED:
            return None
        if _FIELD_BLOCK.fullmatch(fields) is None:
            _diagnose_fields(fields.split(b"\r\n")[:-1], hint)
        if not _contract_allows(refusal):
            return str(refusal)
    return None


# The headers the parser interprets (and the spellings it refuses), found in a head whose field
# lines are valid by one search: each LF there starts a field line, whose name ends at its colon.
_FRAMING_FIELD = re.compile(rb"\n(%s):([^\r]*)" % b"|".join(_TRACKED), re.I)


def _framing_fields(head: bytes, hint: int) -> tuple[list, list[bytes]]:
    """The values of the headers the parser interprets in a head with valid field lines,
    -> (found, hosts): found indexed by _CL, _TE..., duplicates joined into one comma list in
    order (RFC 9110 §5.3); the Host values apart."""
    found = [None] * 6
    hosts: list[bytes] = []
    for name, value in _FRAMING_FIELD.findall(head):
        key = _TRACKED[name.lower()]
        value = value.strip(b" \t")
        if key == _HOST_H:
            hosts.append(value)
        elif key == _LOOKALIKE:
            raise ProtocolError(f"header {name.decode('ascii')!r} imitates a framing header", hint)
        else:
            old = found[key]
            found[key] = value if old is None else old + b"," + value
    return found, hosts


def _split_fields(fields: bytes) -> list[tuple[bytes, bytes]]:
    """Validated field lines -> [(name, stripped value)]."""
    if not fields:
        return []
    lines = (line.partition(b":") for line in fields[:-2].split(b"\r\n"))
    return [(name, value.strip(b" \t")) for name, _, value in lines]


def _diagnose_fields(lines: list[bytes], hint: int, what: str = "header") -> None:
    for index, line in enumerate(lines):
        if _FIELD_LINE.fullmatch(line) is not None:
            continue
        if b"\n" in line:
            raise ProtocolError("bare LF line ending (CRLF required)", hint)
        if b"\r" in line:
            raise ProtocolError("bare CR in " + what, hint)
        if line[:1] in (b" ", b"\t"):
            if index == 0:
                raise ProtocolError(f"whitespace before the first {what} field", hint)
            raise ProtocolError(f"obs-fold (line folding) in {what} section", hint)
        name, colon, value = line.partition(b":")
        if not colon:
            raise ProtocolError(f"{what} line without a colon", hint)
        if not name:
            raise ProtocolError(f"empty {what} name", hint)
        if name[-1:] in (b" ", b"\t"):
            raise ProtocolError(f"whitespace between {what} name and colon", hint)
        if _TOKEN.fullmatch(name) is None:
            raise ProtocolError(f"invalid character in {what} name", hint)
        bad = _CTL.search(value)
        char = value[bad.start()] if bad else 0
        raise ProtocolError(f"invalid character 0x{char:02x} in {what} value", hint)
    raise ProtocolError(f"malformed {what} section", hint)


def _split_list(value: bytes) -> list[bytes]:
    return [item.strip(b" \t") for item in value.split(b",")]


def _split_codings(value: bytes, hint: int) -> list[bytes]:
    # Stricter than RFC 9110 §5.6.1.2 (empty list elements): any doubt about the framing of a
    # body is an error, never a guess.
    codings = _split_list(value.lower())
    for coding in codings:
        if _TOKEN.fullmatch(coding) is None:
            raise ProtocolError("malformed Transfer-Encoding", hint)
    return codings


def _parse_content_length(value: bytes, hint: int) -> int:
    if _DIGITS.fullmatch(value) is not None:
        return int(value)
    numbers = set()
    for item in _split_list(value):
        if _DIGITS.fullmatch(item) is None:
            raise ProtocolError("invalid Content-Length", hint)
        numbers.add(int(item))
    if len(numbers) != 1:
        raise ProtocolError("conflicting Content-Length values", hint)
    return numbers.pop()


def _connection_tokens(value: bytes | None, hint: int) -> frozenset[bytes]:
    if value is None:
        return _NO_TOKENS
    if _TOKEN.fullmatch(value) is not None:  # the usual single "keep-alive" or "close"
        return frozenset((value.lower(),))
    tokens = frozenset(item for item in _split_list(value.lower()) if item)
    for token in tokens:
        if _TOKEN.fullmatch(token) is None:
            raise ProtocolError("malformed Connection header", hint)
    return tokens


def _parse_host(value: bytes, what: str) -> tuple[str, int | None]:
    """uri-host [":" port] (RFC 9110 §7.2) -> (lower-case host, port or None)."""
    parsed = _host_and_port(value)
    if isinstance(parsed, str):
        raise ProtocolError(parsed.format(what=what))
    return parsed


@functools.lru_cache(maxsize=4096)  # a proxy sees the same few hosts over and over
def _host_and_port(value: bytes) -> tuple[str, int | None] | str:
    """_parse_host's answer, or what is wrong with value (a template naming {what})."""
    m = _HOST.fullmatch(value)
    if m is None:
        return "invalid {what}"
    host, port = m.groups()
    if host[:1] == b"[":
        try:
            ipaddress.IPv6Address(host[1:-1].decode("ascii"))
        except ValueError:
            return "invalid IPv6 address in {what}"
    if port is not None:
        port = int(port)
        if port > 65535:
            return "port out of range in {what}"
    return host.decode("ascii").lower(), port


# --- chunked body -----------------------------------------------------------------------------

_SIZE, _DATA, _DATA_CR, _DATA_LF, _TRAILER, _DONE = range(6)


class ChunkedFramer:
    """Validates a chunked body (RFC 9112 §7.1) as it streams by, without copying it; asked
    for spans, it says where the chunk data lies, which decodes the body.

    State persists across feed() calls, so any line may arrive split anywhere. Chunk data is
    skipped by arithmetic; only size lines, the CRLF after data and trailer lines are read.
    """

    __slots__ = ("done", "_limits", "_hint", "_state", "_remaining", "_line", "_trailer_size",
                 "_trailer_count")

    def __init__(self, limits: Limits = DEFAULT_LIMITS, status_hint: int = 400):
        self.done = False
        self._limits = limits
        self._hint = status_hint
        self._state = _SIZE
        self._remaining = 0
        self._line = b""  # partial size or trailer line carried over from the previous feed
        self._trailer_size = 0
        self._trailer_count = 0

    def feed(self, data: bytes | bytearray | memoryview, spans: list | None = None) -> int:
        """Return how many leading bytes of data belong to the body (all unless it ends inside
        data; after done, the rest is the next message). Raises ProtocolError. spans: a list
        to which the (start, end) of each piece of chunk data in data is appended, to decode."""
        n = len(data)
        pos = 0
        while pos < n:
            state = self._state
            if state == _DATA:
                left = n - pos
                if left < self._remaining:
                    self._remaining -= left
                    if spans is not None:
                        spans.append((pos, n))
                    return n
                if spans is not None:
                    spans.append((pos, pos + self._remaining))
                pos += self._remaining
                self._remaining = 0
                self._state = _DATA_CR
            elif state == _DATA_CR or state == _DATA_LF:
                if data[pos] != (13 if state == _DATA_CR else 10):
                    raise ProtocolError("missing CRLF after chunk data", self._hint)
                pos += 1
                self._state = _DATA_LF if state == _DATA_CR else _SIZE
            elif state == _DONE:
                return pos
            else:
                if state == _SIZE:
                    limit = self._limits.max_chunk_line
                else:
                    # the whole trailer section, final CRLF included, fits max_head_size
                    limit = self._limits.max_head_size - self._trailer_size - 2
                room = max(limit - len(self._line), 0) + 2  # the line, then its CRLF
                window = data[pos : pos + room]
                if type(window) is memoryview:
                    window = bytes(window)
                lf = window.find(b"\n")
                if lf < 0:
                    self._line += window
                    if len(self._line) > limit + 1:
                        raise self._too_long(state)
                    return n
                line = self._line + window[:lf]
                self._line = b""
                pos += lf + 1
                if line[-1:] != b"\r":
                    raise ProtocolError("bare LF in chunked body (CRLF required)", self._hint)
                line = line[:-1]
                if len(line) > limit:
                    raise self._too_long(state)
                if state == _SIZE:
                    self._size_line(line)
                else:
                    self._trailer_line(line)
        if self._state == _DONE:
            self.done = True
        return pos

    def _size_line(self, line: bytes) -> None:
        m = _CHUNK_LINE.fullmatch(line)
        if m is None:
            digits = _HEX_PREFIX.match(line).group()
            rest = line[len(digits) :]
            if len(digits) > 16:
                raise ProtocolError("chunk size has more than 16 hex digits", self._hint)
            if digits and rest.lstrip(b" \t")[:1] == b";":
                raise ProtocolError("invalid chunk extension", self._hint)
            raise ProtocolError("invalid chunk size", self._hint)
        size = int(m.group(1), 16)
        if size:
            self._remaining = size
            self._state = _DATA
        else:
            self._state = _TRAILER

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self._state = _DONE
            self.done = True
            return
        self._trailer_count += 1
        self._trailer_size += len(line) + 2
        if self._trailer_count > self._limits.max_header_count:
            raise ProtocolError("too many trailer fields", self._hint)
        if _FIELD_LINE.fullmatch(line) is None:
            # index 1: a leading space in a trailer is always an obs-fold attempt
            _diagnose_fields([b"x:", line], self._hint, "trailer")

    def _too_long(self, state: int) -> ProtocolError:
        what = "chunk size line" if state == _SIZE else "trailer section"
        return ProtocolError(f"{what} too long", self._hint)
