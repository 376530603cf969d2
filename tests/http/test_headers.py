"""The heads sozu forwards, as transcripts: parsed head in, bytes out (no sockets)."""
import dataclasses
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sozu.http import headers
from sozu.http.parser import ProtocolError, parse_request_head, parse_response_head

ORIGIN = SimpleNamespace(scheme=b"http", port=b"8080", by=b"127.0.0.1:8080")


def forwarded(raw: bytes, client=b"10.0.0.9", sticky_name=None) -> list[bytes]:
    head, _ = parse_request_head(raw)
    return headers.request_head(head, client, ORIGIN, b"id-1", sticky_name).split(b"\r\n")


def returned(raw: bytes, method=b"GET", **kwargs) -> list[bytes]:
    head, _ = parse_response_head(raw, method)
    options = dict(keep_alive=True, http10=False) | kwargs
    return headers.response_head(head, b"id-1", **options).split(b"\r\n")


def test_request_hop_by_hop_and_named_headers_are_removed_and_own_headers_added():
    lines = forwarded(b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\n"
                      b"Keep-Alive: 5\r\nTE: trailers\r\nX-Secret: 1\r\nProxy: evil\r\n"
                      b"Proxy-Authorization: x\r\nSozu-Id: spoof\r\nX-Forwarded-Proto: spoof\r\n"
                      b"Expect: 100-continue\r\nContent-Length: 0\r\nAccept: */*\r\n\r\n")
    assert lines[0] == b"GET /a HTTP/1.1"
    assert lines[1:4] == [b"Host: h", b"Content-Length: 0", b"Accept: */*"]
    assert b"X-Forwarded-Proto: http" in lines and b"X-Forwarded-Port: 8080" in lines
    assert b"Sozu-Id: id-1" in lines
    assert not any(l.lower().startswith((b"connection", b"keep-alive", b"te:", b"x-secret",
                                         b"proxy", b"expect")) for l in lines)
    assert lines[-2:] == [b"", b""]


def test_forwarding_chains_are_appended_to():
    lines = forwarded(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\n"
                      b"X-Forwarded-For: 2.2.2.2\r\nForwarded: for=1.1.1.1\r\n\r\n", client=b"::1")
    assert b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, ::1" in lines
    assert b'Forwarded: for=1.1.1.1, proto=http;for="[::1]";by=127.0.0.1:8080' in lines


def test_framing_headers_survive_a_connection_header_naming_them():
    lines = forwarded(b"POST / HTTP/1.1\r\nHost: h\r\nConnection: content-length, host\r\n"
                      b"Content-Length: 3, 3\r\n\r\n")
    assert b"Host: h" in lines and lines.count(b"Content-Length: 3") == 1


def test_absolute_form_goes_out_in_origin_form():
    assert forwarded(b"GET http://h/p?q HTTP/1.1\r\nHost: h\r\n\r\n")[0] == b"GET /p?q HTTP/1.1"
    assert headers.origin_form(b"http://h?q") == b"/?q"
    assert headers.origin_form(b"http://h") == b"/"


def test_http10_requests_ask_the_backend_to_close_and_upgrades_keep_their_headers():
    assert b"Connection: close" in forwarded(b"GET / HTTP/1.0\r\n\r\n")
    lines = forwarded(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert b"Connection: Upgrade" in lines and b"Upgrade: websocket" in lines


@pytest.mark.parametrize("offer, expected", [
    (b"websocket", b"websocket"), (b"WebSocket", b"websocket"), (b"h2c, websocket", b"websocket"),
    (b"h2c", None), (b"H2C", None), (b"websocketx", None), (b"websocket/13", None), (b"TLS/1.2", None),
])
def test_only_a_websocket_upgrade_is_forwarded(offer, expected):
    raw = (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: " + offer +
           b"\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    head, _ = parse_request_head(raw)
    assert headers.forwarded_upgrade(head) == expected
    hop = [l for l in forwarded(raw) if l.lower().startswith((b"upgrade", b"connection", b"http2-settings"))]
    assert hop == ([b"Connection: Upgrade", b"Upgrade: websocket"] if expected else [])


@pytest.mark.parametrize("cookie, expected", [
    (b"SOZUBALANCEID=b1; a=1", b"Cookie: a=1"),
    (b"a=1;SOZUBALANCEID=b1", b"Cookie: a=1"),
    (b"SOZUBALANCEID=b1", None),
    (b"a=1", b"Cookie: a=1"),
])
def test_the_sticky_cookie_is_stripped_for_sticky_applications(cookie, expected):
    raw = b"GET / HTTP/1.1\r\nHost: h\r\nCookie: " + cookie + b"\r\n\r\n"
    lines = forwarded(raw, sticky_name=b"SOZUBALANCEID")
    assert [l for l in lines if l.startswith(b"Cookie")] == ([expected] if expected else [])
    assert b"Cookie: " + cookie in forwarded(raw)  # not sticky: the cookie may be the app's own


def test_sticky_cookie_reads_the_named_cookie():
    head, _ = parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nCookie: x=1; SOZUBALANCEID=b2\r\n\r\n")
    assert headers.sticky_cookie(head, b"SOZUBALANCEID") == "b2"
    assert headers.sticky_cookie(head, b"OTHER") is None


def test_response_speaks_http11_drops_hop_by_hop_and_says_how_the_connection_goes():
    raw = b"HTTP/1.0 200 OK\r\nConnection: close, X-Internal\r\nX-Internal: 1\r\nSozu-Id: spoof\r\nContent-Length: 2\r\n\r\n"
    lines = returned(raw, keep_alive=False)
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"Content-Length: 2" in lines and b"Sozu-Id: id-1" in lines and b"Connection: close" in lines
    assert not any(l.startswith((b"X-Internal", b"Sozu-Id: spoof")) for l in lines)
    assert b"Connection: keep-alive" in returned(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", http10=True)


def test_response_set_cookie_and_upgrade():
    lines = returned(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", set_cookie=b"SOZUBALANCEID=b1; Path=/")
    assert b"Set-Cookie: SOZUBALANCEID=b1; Path=/" in lines
    lines = returned(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                     upgrade=True)
    assert b"Upgrade: websocket" in lines and b"Connection: Upgrade" in lines


def test_a_dechunked_response_goes_without_its_transfer_encoding():
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
    lines = returned(raw, keep_alive=False, http10=True, dechunked=True)
    assert b"X-A: 1" in lines and b"Connection: close" in lines
    assert not any(l.lower().startswith(b"transfer-encoding") for l in lines)
    assert b"Transfer-Encoding: chunked" in returned(raw), "forwarded as it is to HTTP/1.1"


def test_the_pure_http_modules_import_neither_gevent_nor_sockets():
    import subprocess
    import sys
    code = ("import sys, sozu.http.headers, sozu.http.parser, sozu.http.answers; "
            "print(sorted(m for m in ('gevent', 'socket', 'logging') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


response_names = st.sampled_from([b"Connection", b"connection", b"KEEP-ALIVE", b"Keep-Alive", b"TE",
                                  b"te", b"Trailer", b"Upgrade", b"Sozu-Id", b"sozu-id", b"Proxy-Foo",
                                  b"proxy-", b"Proxy", b"X-Connection", b"Connections", b"Tee",
                                  b"Content-Length", b"Server", b"ETag", b"Set-Cookie"])
response_values = st.sampled_from([b"", b"1", b"keep-alive", b"a: b", b" spaced ", b"\tx"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(response_names, st.sampled_from([b":", b": ", b":\t"]), response_values),
                max_size=10))
def test_response_lines_found_by_search_are_the_ones_a_line_by_line_pass_drops(lines):
    fields = b"".join(name + colon + value + b"\r\n" for name, colon, value in lines)
    kept = headers.response_fields_searched(fields)
    expected = [line for line in fields.split(b"\r\n")[:-1]
                if line.partition(b":")[0].lower() not in headers.RESPONSE_DROP
                and not line.lower().startswith(b"proxy-")]
    assert kept == b"".join(line + b"\r\n" for line in expected)
    # and the same header lines as the rebuilding pass, which sozu uses when Connection names more
    rebuilt = headers.response_fields_without(
        [(n, v.strip(b" \t")) for n, _, v in lines], headers.RESPONSE_DROP)
    assert [l.partition(b":")[0] for l in kept.split(b"\r\n")] == [l.partition(b":")[0] for l in rebuilt.split(b"\r\n")]


request_names = st.sampled_from([b"Connection", b"KEEP-ALIVE", b"TE", b"te", b"Trailer", b"Upgrade",
                                 b"Sozu-Id", b"X-Forwarded-Proto", b"x-forwarded-port", b"Expect",
                                 b"Proxy-Authorization", b"Proxy", b"proxyx", b"X-Forwarded-For",
                                 b"forwarded", b"Forwardeds", b"X-Connection", b"Tee", b"Content-Length",
                                 b"Cookie", b"Accept", b"User-Agent", b"X-Forwarded-Host"])
request_values = st.sampled_from([b"", b"1", b"keep-alive", b"a: b", b" spaced ", b"\tx", b"1.2.3.4",
                                  b"for=x", b"SOZUBALANCEID=b; y=2", b"close", b"100-continue"])


def normalized(head: bytes) -> list[bytes]:
    """A head's lines, each field line spelled as a line-by-line pass writes it."""
    lines = head.split(b"\r\n")
    return lines[:1] + [name + b": " + value.strip(b" \t") if colon else name
                        for name, colon, value in (line.partition(b":") for line in lines[1:])]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(request_names, st.sampled_from([b":", b": ", b":\t"]), request_values),
                max_size=10), st.sampled_from([None, b"SOZUBALANCEID"]))
def test_request_lines_found_by_search_are_the_ones_a_line_by_line_pass_makes(lines, sticky_name):
    """The request lines forwarded as they came (one search cuts out the others) are the lines
    the line-by-line pass makes, less the OWS this one strips; where the search does not cover a
    head, the line-by-line pass makes them."""
    raw = b"POST /p HTTP/1.1\r\nHost: h\r\n" + b"".join(n + c + v + b"\r\n" for n, c, v in lines) + b"\r\n"
    try:
        head, _ = parse_request_head(raw)
    except ProtocolError:
        return
    searched = headers.request_head(head, b"10.0.0.9", ORIGIN, b"id-1", sticky_name)
    as_edited = dataclasses.replace(head, fields=None, edited_headers=head.headers)
    by_pairs = headers.request_head(as_edited, b"10.0.0.9", ORIGIN, b"id-1", sticky_name)
    assert normalized(searched) == normalized(by_pairs)
    if headers.request_fields_searched(head, sticky_name) is not None:  # lines as they came
        kept = [line for line in raw.split(b"\r\n")[2:-2]
                if normalized(line)[0] in normalized(searched)]
        assert all(line in searched.split(b"\r\n") for line in kept)
