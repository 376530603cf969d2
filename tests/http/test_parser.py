"""Table-driven tests of sozu.http.parser, one table per rule (h11 style)."""

import httptools
import pytest

from sozu.http import parser
from sozu.http.parser import (
    DEFAULT_LIMITS,
    ChunkedFramer,
    Limits,
    ProtocolError,
    parse_request_head,
    parse_response_head,
)


def req(*lines: bytes) -> bytes:
    """A request head from its lines (request line first), CRLF-terminated."""
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def get(*headers: bytes, line: bytes = b"GET / HTTP/1.1") -> bytes:
    return req(line, *headers)


def parse(data: bytes, limits: Limits = DEFAULT_LIMITS):
    result = parse_request_head(data, limits)
    assert result is not None, "head should be complete"
    return result[0]


def fails(data: bytes, limits: Limits = DEFAULT_LIMITS, method: bytes | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        if method is None:
            parse_request_head(data, limits)
        else:
            parse_response_head(data, method, limits)
    return info.value


def frame(body: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[ChunkedFramer, int]:
    framer = ChunkedFramer(limits)
    return framer, framer.feed(body)


# --- valid requests -------------------------------------------------------------------------

VALID = [
    # (request, expected fields)
    (get(b"Host: example.com"),
     dict(method=b"GET", target=b"/", version=b"HTTP/1.1", host="example.com", path=b"/",
          content_length=None, chunked=False, keep_alive=True, upgrade=None)),
    (get(b"Host: Example.COM:8080", line=b"GET /a/b?x=1&y=%20 HTTP/1.1"),
     dict(host="example.com", path=b"/a/b", target=b"/a/b?x=1&y=%20")),
    (get(line=b"GET /index.html HTTP/1.0"),
     dict(version=b"HTTP/1.0", host="", keep_alive=False)),
    (get(b"Connection: Keep-Alive", line=b"GET / HTTP/1.0"),
     dict(keep_alive=True, connection_tokens=frozenset({b"keep-alive"}))),
    (get(b"Host: a", b"Connection: close"),
     dict(keep_alive=False, connection_tokens=frozenset({b"close"}))),
    (get(b"Host: a", b"Connection: keep-alive", b"Connection: close"), dict(keep_alive=False)),
    (get(b"Host: a", b"Content-Length: 42", line=b"POST /f HTTP/1.1"),
     dict(method=b"POST", content_length=42)),
    (get(b"Host: a", b"Content-Length: 0"), dict(content_length=0)),
    (get(b"Host: a", b"Content-Length: 007"), dict(content_length=7)),
    (get(b"Host: a", b"Content-Length: 5", b"content-length: 5"), dict(content_length=5)),
    (get(b"Host: a", b"Content-Length: 5, 5"), dict(content_length=5)),
    (get(b"Host: a", b"Content-Length: 999999999999999999"),
     dict(content_length=999999999999999999)),
    (get(b"Host: a", b"Transfer-Encoding: chunked"), dict(chunked=True, content_length=None)),
    (get(b"Host: a", b"Transfer-Encoding: \tCHUNKED \t"), dict(chunked=True)),
    (get(b"Host: a", b"Expect: 100-Continue"), dict(expect_continue=True)),
    (get(b"Host: a", b"Expect: 100-continue", line=b"GET / HTTP/1.0"), dict(expect_continue=False)),
    (get(b"Host: a", b"Connection: Upgrade", b"Upgrade: WebSocket"),
     dict(upgrade=b"websocket", connection_tokens=frozenset({b"upgrade"}))),
    (get(b"Host: a", b"Upgrade: websocket"), dict(upgrade=None)),
    (get(b"Host: a", b"Connection: upgrade", b"Upgrade: h2c", line=b"GET / HTTP/1.0"),
     dict(upgrade=None)),
    (get(b"Host: a", line=b"OPTIONS * HTTP/1.1"), dict(method=b"OPTIONS", target=b"*", path=b"/")),
    (get(b"Host: example.com", line=b"GET http://Example.com/p?q HTTP/1.1"),
     dict(host="example.com", path=b"/p", target=b"http://Example.com/p?q")),
    (get(b"Host: example.com:443", line=b"GET https://example.com HTTP/1.1"),
     dict(host="example.com", path=b"/")),
    (get(line=b"GET http://example.com:81/ HTTP/1.0"), dict(host="example.com")),
    (get(b"Host: [::1]:8080"), dict(host="[::1]")),
    (get(b"Host: 192.0.2.1"), dict(host="192.0.2.1")),
    (get(b"Host: xn--bcher-kva.example"), dict(host="xn--bcher-kva.example")),
    (get(b"Host:example.com"), dict(host="example.com")),
    (get(b"Host: a", line=b"PURGE /x HTTP/1.1"), dict(method=b"PURGE")),
    (get(b"Host: a", line=b"get /x HTTP/1.1"), dict(method=b"get")),
    (get(b"Host: a", line=b"GET /a|b^c{d}~!$&'()*+,;=:@ HTTP/1.1"),
     dict(path=b"/a|b^c{d}~!$&'()*+,;=:@")),
]


@pytest.mark.parametrize("data, expected", VALID)
def test_valid_request(data, expected):
    head, n = parse_request_head(data)
    assert n == len(data)
    for field, value in expected.items():
        assert getattr(head, field) == value, field


def test_headers_keep_wire_order_and_names_and_strip_ows():
    head = parse(get(b"Host: a", b"X-Empty:", b"x-Two:  a  b \t", b"X-Obs: caf\xc3\xa9", b"X-Tab:\tv"))
    assert head.headers == [
        (b"Host", b"a"), (b"X-Empty", b""), (b"x-Two", b"a  b"), (b"X-Obs", b"caf\xc3\xa9"),
        (b"X-Tab", b"v"),
    ]


def test_bytearray_input_gives_bytes():
    head, n = parse_request_head(bytearray(get(b"Host: a", b"X: y")))
    assert type(head.method) is bytes and all(type(v) is bytes for h in head.headers for v in h)


@pytest.mark.parametrize("empty_lines", [1, 2, 8])
def test_leading_empty_lines_are_skipped_and_counted(empty_lines):
    data = b"\r\n" * empty_lines + get(b"Host: a")
    head, n = parse_request_head(data)
    assert n == len(data) and head.method == b"GET"


def test_too_many_leading_empty_lines():
    assert fails(b"\r\n" * 9 + get(b"Host: a")).status_hint == 400


# --- invalid requests -------------------------------------------------------------------------

HOST = b"Host: a"
INVALID = [
    # (id, request, status, words of the message)
    # request line
    ("http09", b"GET /\r\n\r\n", 400, "HTTP/0.9"),
    ("double-space", get(HOST, line=b"GET  / HTTP/1.1"), 400, "METHOD SP"),
    ("trailing-space", get(HOST, line=b"GET / HTTP/1.1 "), 400, "METHOD SP"),
    ("tab-separator", get(HOST, line=b"GET\t/ HTTP/1.1"), 400, "single spaces"),
    ("leading-space", get(HOST, line=b" GET / HTTP/1.1"), 400, "whitespace before"),
    ("space-in-target", get(HOST, line=b"GET /a b HTTP/1.1"), 400, "METHOD SP"),
    ("ctl-in-target", get(HOST, line=b"GET /a\x01b HTTP/1.1"), 400, "request target"),
    ("del-in-target", get(HOST, line=b"GET /a\x7f HTTP/1.1"), 400, "request target"),
    ("utf8-in-target", get(HOST, line=b"GET /caf\xc3\xa9 HTTP/1.1"), 400, "request target"),
    ("fragment", get(HOST, line=b"GET /a#b HTTP/1.1"), 400, "fragment"),
    ("bad-method", get(HOST, line=b"G(T / HTTP/1.1"), 400, "method"),
    ("relative-target", get(HOST, line=b"GET a/b HTTP/1.1"), 400, "origin-form"),
    ("authority-form", get(HOST, line=b"GET a:80 HTTP/1.1"), 400, "origin-form"),
    ("connect", get(HOST, line=b"CONNECT a:443 HTTP/1.1"), 400, "CONNECT"),
    ("asterisk-not-options", get(HOST, line=b"GET * HTTP/1.1"), 400, "OPTIONS"),
    ("ftp-scheme", get(HOST, line=b"GET ftp://a/ HTTP/1.1"), 400, "origin-form"),
    ("userinfo", get(b"Host: a", line=b"GET http://u@a/ HTTP/1.1"), 400, "userinfo"),
    ("empty-authority", get(HOST, line=b"GET http:///x HTTP/1.1"), 400, "authority"),
    ("absolute-host-mismatch", get(b"Host: b", line=b"GET http://a/ HTTP/1.1"), 400, "match"),
    ("absolute-port-mismatch", get(b"Host: a:8080", line=b"GET http://a/ HTTP/1.1"), 400, "match"),
    ("lowercase-version", get(HOST, line=b"GET / http/1.1"), 400, "version"),
    ("version-junk", get(HOST, line=b"GET / HTTP/1.1x"), 400, "version"),
    ("version-long", get(HOST, line=b"GET / HTTP/11.1"), 400, "version"),
    ("http2", get(HOST, line=b"GET / HTTP/2.0"), 505, "version"),
    ("http12", get(HOST, line=b"GET / HTTP/1.2"), 505, "version"),
    ("http09-explicit", get(HOST, line=b"GET / HTTP/0.9"), 505, "version"),
    # line endings
    ("lf-only", b"GET / HTTP/1.1\nHost: a\n\n", 400, "bare LF"),
    ("lf-after-request-line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400, "bare LF"),
    ("lf-in-headers", b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400, "bare LF"),
    ("cr-in-request-line", b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400, "bare CR"),
    ("cr-in-header", b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400, "bare CR"),
    ("lf-before-request", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare LF"),
    # field lines
    ("space-before-colon", get(b"Host : a"), 400, "between header name and colon"),
    ("tab-before-colon", get(HOST, b"X\t: y"), 400, "between header name and colon"),
    ("leading-ws-first-header", get(b" Host: a"), 400, "before the first header"),
    ("obs-fold", get(HOST, b"X: y", b" z"), 400, "obs-fold"),
    ("obs-fold-tab", get(HOST, b"X: y", b"\tz"), 400, "obs-fold"),
    ("no-colon", get(HOST, b"X-Broken"), 400, "without a colon"),
    ("empty-name", get(HOST, b": v"), 400, "empty header name"),
    ("bad-name-char", get(HOST, b"X(y): v"), 400, "header name"),
    ("obs-text-in-name", get(HOST, b"X\xe9: v"), 400, "header name"),
    ("nul-in-value", get(HOST, b"X: a\x00b"), 400, "0x00"),
    ("vt-in-value", get(HOST, b"X: a\x0bb"), 400, "0x0b"),
    ("del-in-value", get(HOST, b"X: a\x7f"), 400, "0x7f"),
    ("esc-in-value", get(HOST, b"X: \x1b[31m"), 400, "0x1b"),
    # Content-Length
    ("cl-plus", get(HOST, b"Content-Length: +5"), 400, "Content-Length"),
    ("cl-minus", get(HOST, b"Content-Length: -1"), 400, "Content-Length"),
    ("cl-underscore", get(HOST, b"Content-Length: 1_0"), 400, "Content-Length"),
    ("cl-hex", get(HOST, b"Content-Length: 0x10"), 400, "Content-Length"),
    ("cl-arabic-digit", get(HOST, "Content-Length: \u0661".encode()), 400, "Content-Length"),
    ("cl-inner-space", get(HOST, b"Content-Length: 1 0"), 400, "Content-Length"),
    ("cl-empty", get(HOST, b"Content-Length:"), 400, "Content-Length"),
    ("cl-19-digits", get(HOST, b"Content-Length: 1000000000000000000"), 400, "Content-Length"),
    ("cl-list-differs", get(HOST, b"Content-Length: 5, 6"), 400, "conflicting"),
    ("cl-twice-differs", get(HOST, b"Content-Length: 5", b"Content-Length: 6"), 400, "conflicting"),
    ("cl-empty-element", get(HOST, b"Content-Length: 5,"), 400, "Content-Length"),
    ("cl-underscore-name", get(HOST, b"Content_Length: 5"), 400, "imitates"),
    # Transfer-Encoding
    ("te-and-cl", get(HOST, b"Transfer-Encoding: chunked", b"Content-Length: 3"), 400, "both"),
    ("cl-and-te", get(HOST, b"Content-Length: 3", b"Transfer-Encoding: chunked"), 400, "both"),
    ("te-http10", get(HOST, b"Transfer-Encoding: chunked", line=b"POST / HTTP/1.0"), 400, "HTTP/1.0"),
    ("te-gzip", get(HOST, b"Transfer-Encoding: gzip"), 501, "unsupported"),
    ("te-identity", get(HOST, b"Transfer-Encoding: identity"), 501, "unsupported"),
    ("te-xchunked", get(HOST, b"Transfer-Encoding: xchunked"), 501, "unsupported"),
    ("te-gzip-chunked", get(HOST, b"Transfer-Encoding: gzip, chunked"), 501, "unsupported"),
    ("te-chunked-gzip", get(HOST, b"Transfer-Encoding: chunked, gzip"), 400, "final"),
    ("te-chunked-twice", get(HOST, b"Transfer-Encoding: chunked, chunked"), 400, "more than once"),
    ("te-two-headers", get(HOST, b"Transfer-Encoding: chunked", b"Transfer-Encoding: x"), 400, "final"),
    ("te-empty", get(HOST, b"Transfer-Encoding:"), 400, "malformed"),
    ("te-empty-element", get(HOST, b"Transfer-Encoding: chunked,"), 400, "malformed"),
    ("te-quoted", get(HOST, b'Transfer-Encoding: "chunked"'), 400, "malformed"),
    ("te-param", get(HOST, b"Transfer-Encoding: chunked;q=1"), 400, "malformed"),
    ("te-vt", get(HOST, b"Transfer-Encoding: \x0bchunked"), 400, "0x0b"),
    ("te-space-before-colon", get(HOST, b"Transfer-Encoding : chunked"), 400, "colon"),
    ("te-underscore-name", get(HOST, b"Transfer_Encoding: chunked"), 400, "imitates"),
    # Host
    ("no-host", get(b"X: y"), 400, "without a Host"),
    ("two-hosts", get(b"Host: a", b"Host: a"), 400, "several Host"),
    ("empty-host", get(b"Host:"), 400, "Host"),
    ("host-space", get(b"Host: a b"), 400, "Host"),
    ("host-slash", get(b"Host: a/b"), 400, "Host"),
    ("host-userinfo", get(b"Host: u@a"), 400, "Host"),
    ("host-two-colons", get(b"Host: a:1:2"), 400, "Host"),
    ("host-port-letters", get(b"Host: a:http"), 400, "Host"),
    ("host-port-range", get(b"Host: a:65536"), 400, "port"),
    ("host-empty-port", get(b"Host: a:"), 400, "Host"),
    ("host-only-port", get(b"Host: :80"), 400, "Host"),
    ("host-bad-ipv6", get(b"Host: [1::2::3]"), 400, "IPv6"),
    ("host-ipv6-letters", get(b"Host: [::g]"), 400, "Host"),
    ("host-unclosed-ipv6", get(b"Host: [::1"), 400, "Host"),
    ("host-zone-ipv6", get(b"Host: [fe80::1%25eth0]"), 400, "Host"),
    ("host-http10-invalid", get(b"Host: a b", line=b"GET / HTTP/1.0"), 400, "Host"),
    # Connection
    ("connection-not-token", get(HOST, b"Connection: clo(se"), 400, "Connection"),
]


@pytest.mark.parametrize("name, data, status, words", INVALID, ids=[case[0] for case in INVALID])
def test_invalid_request(name, data, status, words):
    error = fails(data)
    assert error.status_hint == status
    assert words.lower() in error.message.lower()
    assert str(error) == error.message


def test_absolute_form_default_port_matches_host_with_port():
    assert parse(get(b"Host: a:80", line=b"GET http://a/ HTTP/1.1")).host == "a"


# --- limits ----------------------------------------------------------------------------------

SMALL = Limits(max_request_line=40, max_header_count=3, max_head_size=120)


@pytest.mark.parametrize(
    "data, status",
    [
        (get(HOST, line=b"GET /" + b"a" * 36 + b" HTTP/1.1"), 414),  # complete, line of 50
        (b"GET /" + b"a" * 40, 414),  # incomplete, already over
        (get(HOST, b"A: 1", b"B: 2", b"C: 3"), 431),  # 4 field lines
        (b"GET / HTTP/1.1\r\n" + b"A: 1\r\n" * 5, 431),  # incomplete, already over
        (get(HOST, b"X: " + b"v" * 100), 431),
        (b"GET / HTTP/1.1\r\nX: " + b"v" * 101, 431),  # incomplete, 120 bytes already
    ],
)
def test_limits(data, status):
    assert fails(data, SMALL).status_hint == status


def test_limits_are_inclusive():
    line = b"GET /" + b"a" * 26 + b" HTTP/1.1"  # exactly 40
    assert len(line) == 40
    parse(get(HOST, line=line), SMALL)
    assert parse_request_head(line + b"\r", SMALL) is None
    head = get(b"Host: " + b"h" * 94)
    assert len(head) == 120
    parse(head, SMALL)
    assert parse_request_head(head[:-1], SMALL) is None
    parse(get(HOST, b"A: 1", b"B: 2"), SMALL)


def test_default_limits():
    assert DEFAULT_LIMITS == Limits(8192, 100, 32768)
    parse(get(*[b"X%d: v" % i for i in range(99)], HOST))
    assert fails(get(*[b"X%d: v" % i for i in range(100)], HOST)).status_hint == 431


# --- incremental feeding and pipelining ------------------------------------------------------

@pytest.mark.parametrize("data, _", VALID)
def test_every_prefix_is_incomplete(data, _):
    complete = parse_request_head(data)
    for cut in range(len(data)):
        assert parse_request_head(data[:cut]) is None, cut
        assert parse_request_head(bytearray(data[:cut])) is None, cut
    assert parse_request_head(bytearray(data)) == complete


def test_every_prefix_of_a_long_head_is_incomplete():
    # longer than the window searched for bare CR/LF in incomplete heads: no false alarm
    # where a CRLF straddles the window's edge
    data = get(HOST, *[b"X-Header-%02d: %s" % (i, b"v" * (i % 7 + 60)) for i in range(80)])
    assert len(data) > 5000
    for cut in range(len(data)):
        assert parse_request_head(data[:cut]) is None, cut
    assert parse_request_head(data)[1] == len(data)


def test_bare_lf_late_in_a_large_incomplete_head_is_refused_early():
    data = get(HOST, *[b"X-%02d: %s" % (i, b"v" * 60) for i in range(50)])[:-2]
    assert fails(data + b"X-Late: a\nb").status_hint == 400


@pytest.mark.parametrize("name, data, status, words", INVALID, ids=[case[0] for case in INVALID])
def test_prefixes_of_invalid_requests_never_succeed(name, data, status, words):
    seen_error = False
    for cut in range(len(data) + 1):
        try:
            result = parse_request_head(data[:cut])
        except ProtocolError:
            seen_error = True
            continue
        assert result is None and not seen_error, cut


@pytest.mark.parametrize(
    "partial, status",
    [
        (b"GET /\r\n", 400),  # HTTP/0.9: refused before the client waits for nothing
        (b"GET / HTTP/2.0\r\n", 505),
        (b"GET / HTTP/1.1\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\rX", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # a TLS ClientHello
        (b"GET\t", 400),
        (b"GET / HTTP/1.1x", 400),
    ],
)
def test_incomplete_but_already_wrong(partial, status):
    assert fails(partial).status_hint == status


def test_pipelined_requests():
    first = get(HOST, b"Content-Length: 3", line=b"POST /1 HTTP/1.1")
    second = b"\r\n" + get(HOST, line=b"GET /2 HTTP/1.1")
    third = get(HOST, line=b"GET /3 HTTP/1.1")
    buf = bytearray(first + b"abc" + second + third)
    paths = []
    while buf:
        head, n = parse_request_head(buf)
        paths.append(head.path)
        del buf[: n + (head.content_length or 0)]
    assert paths == [b"/1", b"/2", b"/3"]


def test_n_excludes_following_bytes():
    data = get(HOST)
    assert parse_request_head(data + b"GET / HT")[1] == len(data)
    assert parse_request_head(data + b"\x00garbage")[1] == len(data)


# --- responses -------------------------------------------------------------------------------

def resp(*lines: bytes) -> bytes:
    return req(*lines)


RESPONSES = [
    # (response, request method, expected fields)
    (resp(b"HTTP/1.1 200 OK", b"Content-Length: 5"), b"GET",
     dict(status=200, reason=b"OK", body="length", content_length=5, keep_alive=True)),
    (resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked"), b"GET",
     dict(body="chunked", chunked=True, content_length=None)),
    (resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip, chunked"), b"GET", dict(body="chunked")),
    (resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked, gzip"), b"GET",
     dict(body="close", chunked=False, keep_alive=False)),
    (resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip"), b"GET", dict(body="close")),
    (resp(b"HTTP/1.1 200 OK"), b"GET", dict(body="close", keep_alive=False)),
    (resp(b"HTTP/1.1 200 OK", b"Content-Length: 5"), b"HEAD", dict(body="none", content_length=5)),
    (resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked"), b"HEAD",
     dict(body="none", chunked=False)),
    (resp(b"HTTP/1.1 204 No Content"), b"DELETE", dict(body="none", keep_alive=True)),
    (resp(b"HTTP/1.1 304 Not Modified", b"Content-Length: 99"), b"GET", dict(body="none")),
    (resp(b"HTTP/1.1 100 Continue"), b"POST", dict(status=100, body="none")),
    # llhttp stops after any 101 head, also one without Upgrade headers: no refusal
    (resp(b"HTTP/1.1 101 Switching Protocols"), b"GET", dict(status=101, body="none")),
    (resp(b"HTTP/1.1 101 Switching Protocols", b"Connection: Upgrade", b"Upgrade: websocket"),
     b"GET", dict(status=101, body="none", connection_tokens=frozenset({b"upgrade"}))),
    (resp(b"HTTP/1.0 200 OK", b"Content-Length: 5"), b"GET", dict(keep_alive=False)),
    (resp(b"HTTP/1.0 200 OK", b"Content-Length: 5", b"Connection: keep-alive"), b"GET",
     dict(keep_alive=True, version=b"HTTP/1.0")),
    (resp(b"HTTP/1.0 200 OK", b"Transfer-Encoding: chunked"), b"GET",
     dict(body="close", keep_alive=False)),
    (resp(b"HTTP/1.1 200 OK", b"Content-Length: 5", b"Connection: close"), b"GET",
     dict(body="length", keep_alive=False)),
    (resp(b"HTTP/1.1 200 OK", b"Content-Length: 5", b"Content-Length: 5"), b"GET",
     dict(content_length=5)),
    (resp(b"HTTP/1.1 404"), b"GET", dict(status=404, reason=b"")),
    (resp(b"HTTP/1.1 404 "), b"GET", dict(status=404, reason=b"")),
    (resp(b"HTTP/1.1 500 Internal \xe9rror"), b"GET", dict(reason=b"Internal \xe9rror")),
]


@pytest.mark.parametrize("data, method, expected", RESPONSES)
def test_response(data, method, expected):
    head, n = parse_response_head(data, method)
    assert n == len(data)
    for field, value in expected.items():
        assert getattr(head, field) == value, field
    for cut in range(len(data)):
        assert parse_response_head(data[:cut], method) is None


INVALID_RESPONSES = [
    resp(b"HTTP/1.1 200 OK", b"Content-Length: 5", b"Transfer-Encoding: chunked"),
    resp(b"HTTP/1.1 200 OK", b"Content-Length: 5", b"Content-Length: 6"),
    resp(b"HTTP/1.1 200 OK", b"Content-Length: +5"),
    resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked, chunked"),
    resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: ,chunked"),
    resp(b"HTTP/1.1 200 OK", b"Content_Length: 5"),
    resp(b"HTTP/1.1 200 OK", b"X: a", b" folded"),
    resp(b"HTTP/1.1 200 OK", b"X : a"),
    resp(b"HTTP/1.1 200 OK", b"X: a\x00"),
    resp(b"HTTP/1.1 200 OK", b"Connection: a b"),
    resp(b"HTTP/1.1 099 Low"),
    resp(b"HTTP/1.1 600 High"),
    resp(b"HTTP/1.1 20 OK"),
    resp(b"HTTP/1.1  200 OK"),
    resp(b"HTTP/1.1 200 O\x01K"),
    resp(b"HTTP/2.0 200 OK"),
    resp(b"HTTP/1.2 200 OK"),
    resp(b"http/1.1 200 OK"),
    resp(b"ICY 200 OK"),
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n\r\n",
    b"\r\nHTTP/1.1 200 OK\r\n\r\n",
    b"SSH-2.0-OpenSSH",
]


@pytest.mark.parametrize("data", INVALID_RESPONSES)
def test_invalid_response(data):
    assert fails(data, method=b"GET").status_hint == 502


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nX: " + b"v" * 200,
        resp(b"HTTP/1.1 200 OK", b"X: " + b"v" * 200),
        resp(b"HTTP/1.1 200 OK", b"A: 1", b"B: 2", b"C: 3", b"D: 4"),
        b"HTTP/1.1 200 " + b"K" * 50,
    ],
)
def test_response_limits_are_502(data):
    assert fails(data, SMALL, method=b"GET").status_hint == 502


def test_response_then_next_bytes():
    data = resp(b"HTTP/1.1 100 Continue") + resp(b"HTTP/1.1 200 OK", b"Content-Length: 2") + b"ok"
    first, n = parse_response_head(data, b"POST")
    second, m = parse_response_head(data[n:], b"POST")
    assert (first.status, second.status, data[n + m :]) == (100, 200, b"ok")


# --- chunked framing ------------------------------------------------------------------------

VALID_BODIES = [
    b"0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n",
    b"000005\r\nhello\r\n000\r\n\r\n",
    b"ffffffffffffffff\r\n"[:0] + b"1\r\n\r\r\n0\r\n\r\n",  # data may contain CR and LF
    b"2\r\n\r\n\r\n0\r\n\r\n",
    b"5;name=value\r\nhello\r\n0\r\n\r\n",
    b"5 ; a = b ;c;d=\"q \\\" t\"\r\nhello\r\n0;last\r\n\r\n",
    b"0\r\nExpires: never\r\nX-Sum:\t1 2 \r\n\r\n",
    b"3\r\n\x00\xff\x80\r\n0\r\nX: caf\xc3\xa9\r\n\r\n",
]


@pytest.mark.parametrize("body", VALID_BODIES)
def test_chunked_valid(body):
    framer, used = frame(body + b"GET / HTTP/1.1\r\n")
    assert framer.done and used == len(body)
    assert framer.feed(b"more") == 0


@pytest.mark.parametrize("body", VALID_BODIES)
def test_chunked_split_at_every_offset(body):
    for cut in range(len(body) + 1):
        framer = ChunkedFramer()
        assert framer.feed(body[:cut]) == cut
        assert framer.done is (cut == len(body))
        assert framer.feed(memoryview(body + b"NEXT")[cut:]) == len(body) - cut
        assert framer.done


@pytest.mark.parametrize("body", VALID_BODIES)
def test_chunked_byte_by_byte(body):
    framer = ChunkedFramer()
    for i in range(len(body)):
        assert not framer.done
        assert framer.feed(bytearray(body[i : i + 1])) == 1
    assert framer.done


def test_chunked_large_chunk_is_skipped_without_reading():
    framer = ChunkedFramer()
    assert framer.feed(b"100000\r\n") == 8
    for _ in range(16):
        assert framer.feed(memoryview(b"x" * 65536)) == 65536
    assert framer.feed(b"\r\n0\r\n\r\n") == 7 and framer.done


INVALID_BODIES = [
    # (body, words of the message)
    (b"\r\n", "chunk size"),
    (b"x\r\n", "chunk size"),
    (b"+5\r\nhello\r\n", "chunk size"),
    (b"-5\r\nhello\r\n", "chunk size"),
    (b"0x5\r\nhello\r\n", "chunk size"),
    (b" 5\r\nhello\r\n", "chunk size"),
    (b"5 \r\nhello\r\n", "chunk size"),
    (b"\t5\r\nhello\r\n", "chunk size"),
    (b"5_0\r\n", "chunk size"),
    (b"1" * 17 + b"\r\n", "16 hex digits"),
    (b"5;\r\nhello\r\n", "extension"),
    (b"5;a=\r\nhello\r\n", "extension"),
    (b"5;a b\r\nhello\r\n", "extension"),
    (b'5;a="unterminated\r\nhello\r\n', "extension"),
    (b"5;a=\x00\r\n", "extension"),
    (b"5\nhello\r\n", "bare LF"),
    (b"5;a\nhello\r\n", "bare LF"),
    (b"5\r\nhello\n0\r\n\r\n", "CRLF after chunk data"),
    (b"5\r\nhelloX\r\n", "CRLF after chunk data"),
    (b"5\r\nhello\rX", "CRLF after chunk data"),
    (b"3\r\nhello\r\n", "CRLF after chunk data"),
    (b"5\r\nhello\r\n0\r\nX: y\n\r\n", "bare LF"),
    (b"5\r\nhello\r\n0\r\n\n", "bare LF"),
    (b"0\r\nX : y\r\n\r\n", "colon"),
    (b"0\r\n folded\r\n\r\n", "obs-fold"),
    (b"0\r\nno colon\r\n\r\n", "colon"),
    (b"0\r\nX: a\x00b\r\n\r\n", "0x00"),
    (b"0\r\nX: a\rb\r\n\r\n", "bare CR"),
]


@pytest.mark.parametrize("body, words", INVALID_BODIES)
def test_chunked_invalid(body, words):
    with pytest.raises(ProtocolError) as info:
        frame(body)
    assert info.value.status_hint == 400
    assert words.lower() in info.value.message.lower()
    with pytest.raises(ProtocolError):  # same verdict byte by byte
        framer = ChunkedFramer()
        for i in range(len(body)):
            framer.feed(body[i : i + 1])


def test_chunked_trailer_section_limit_is_exact():
    limits = Limits(max_head_size=20)
    fits = b"0\r\n" + b"A: 1234567\r\n" + b"B: 1\r\n" + b"\r\n"  # trailer section of 20
    assert frame(fits, limits)[0].done
    with pytest.raises(ProtocolError, match="too long"):
        frame(fits.replace(b"B: 1", b"B: 12"), limits)


def test_chunked_status_hint_for_responses():
    with pytest.raises(ProtocolError) as info:
        ChunkedFramer(status_hint=502).feed(b"zz\r\n")
    assert info.value.status_hint == 502


def test_chunked_limits():
    limits = Limits(max_header_count=2, max_head_size=64, max_chunk_line=16)
    ok = b"5;abcdefghij\r\nhello\r\n0\r\nA: 1\r\nB: 2\r\n\r\n"  # size line of exactly 12
    assert frame(ok, limits)[0].done
    assert ChunkedFramer(limits).feed(b"5;" + b"a" * 14 + b"\r") == 17  # 16 + CR: still fine
    for body in (
        b"5;" + b"a" * 15 + b"\r\n",  # size line of 17, complete
        b"5;" + b"a" * 20,  # already over, no CRLF yet
        b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",  # 3 trailer fields
        b"0\r\nA: " + b"v" * 70 + b"\r\n\r\n",  # trailer section over 64 bytes
        b"0\r\nA: " + b"v" * 70,
    ):
        with pytest.raises(ProtocolError, match="too"):
            frame(body, limits)


# --- llhttp's own refusals ------------------------------------------------------------------

def refusing(reason: str, error=httptools.HttpParserError):
    """An llhttp parser that refuses every head with reason."""
    class Refusing:
        def __init__(self, protocol):
            pass

        def feed_data(self, data):
            raise error(reason)
    return Refusing


def test_what_llhttp_alone_refuses_stays_refused(monkeypatch):
    """A head the contract's grammar allows but llhttp refuses for a reason sozu does not judge
    itself is refused: llhttp is a second opinion, not overruled."""
    monkeypatch.setattr(parser, "HttpRequestParser", refusing("Invalid header value char"))
    monkeypatch.setattr(parser, "HttpResponseParser", refusing("Invalid header value char"))
    error = fails(get(b"Host: a"))
    assert (error.status_hint, "llhttp" in error.message) == (400, True)
    error = fails(resp(b"HTTP/1.1 200 OK", b"Content-Length: 0"), method=b"GET")
    assert (error.status_hint, "llhttp" in error.message) == (502, True)
    # a fault the contract names is named in its words, not llhttp's
    assert fails(get(b"Host: a", b"X : b")).message == "whitespace between header name and colon"


@pytest.mark.parametrize("reason, error", [
    ("Invalid method encountered", httptools.HttpParserInvalidMethodError),
    ("Duplicate Content-Length", httptools.HttpParserError),
    ("Request has invalid `Transfer-Encoding`", httptools.HttpParserError),
])
def test_what_sozu_decides_itself_is_not_refused_for_llhttp(monkeypatch, reason, error):
    monkeypatch.setattr(parser, "HttpRequestParser", refusing(reason, error))
    head = parse(get(b"Host: a", b"Content-Length: 5", b"Content-Length: 5", line=b"PURGEX / HTTP/1.1"))
    assert (head.method, head.content_length) == (b"PURGEX", 5)
