"""Strictness through a real proxy: ambiguous or malformed requests are answered 4xx/5xx with
`Connection: close`, and no byte of them reaches a backend (no smuggling, no desync). Backend
answers are held to the same rules: a malformed one is a 502 and its connection is dropped."""
import socket
import threading
import time

import pytest

from tests.integration.harness import (
    RawBackend,
    Sozu,
    free_port,
    http_config,
    proxy_and_backend,
    raw_request,
    read_response,
    wait_for,
)

H = b"Host: localhost\r\n"


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    with proxy_and_backend(tmp_path_factory.mktemp("strict"), "strict") as proxy:
        yield proxy


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def head_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[0]


REFUSED = [
    # (case, raw request, status)
    ("CL+TE", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", 400),
    ("TE+CL", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    ("two different CL", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    ("CL list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 6\r\n\r\nhello!", 400),
    ("CL sign", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", 400),
    ("CL hex", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello", 400),
    ("CL negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("CL lookalike", b"POST / HTTP/1.1\r\n" + H + b"Content_Length: 5\r\n\r\nhello", 400),
    ("TE lookalike", b"POST / HTTP/1.1\r\n" + H + b"Transfer_Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE unknown", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 501),
    ("TE xchunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    ("TE chunked not last", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("TE twice chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", 400),
    ("TE vertical tab", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400),
    ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("space before colon", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("tab before colon", b"GET / HTTP/1.1\r\n" + H + b"X-A\t: 1\r\n\r\n", 400),
    ("bad header name", b"GET / HTTP/1.1\r\n" + H + b"Bad Name: 1\r\n\r\n", 400),
    ("header name with @", b"GET / HTTP/1.1\r\n" + H + b"X@Y: 1\r\n\r\n", 400),
    ("empty header name", b"GET / HTTP/1.1\r\n" + H + b": 1\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n  continued\r\n\r\n", 400),
    ("obs-fold of TE", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    ("whitespace before first header", b"GET / HTTP/1.1\r\n Host: localhost\r\n\r\n", 400),
    ("CR in value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400),
    ("NUL in value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("bare LF", b"GET / HTTP/1.1\n" + b"Host: localhost\n\n", 400),
    ("missing Host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two Hosts", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400),
    ("Host mismatch", b"GET http://other/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("bad Host", b"GET / HTTP/1.1\r\nHost: local host\r\n\r\n", 400),
    ("HTTP/0.9", b"GET /\r\n", 400),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    ("lower-case version", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("two spaces in request line", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("CONNECT", b"CONNECT localhost:443 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("not HTTP at all", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, 400),
    ("bad chunk size", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
    ("negative chunk size", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
     400),
    ("chunk size overflow", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"10000000000000005\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size with space", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
     400),
    ("chunk without CRLF", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
     400),
    ("chunk bare LF", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
    ("request line too long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("too many headers", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431),
    ("head too large", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(40))
     + b"\r\n", 431),
]


@pytest.mark.parametrize("case,data,status", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_and_nothing_reaches_the_backend(strict, case, data, status):
    before = strict.backend.connections
    started = time.monotonic()
    answer = raw_request(strict.port, data, timeout=5)
    assert time.monotonic() - started < 3, "the proxy must close at once, not wait for a timeout"
    assert status_of(answer) == status, answer
    head = head_of(answer)
    assert b"\r\nConnection: close" in head
    assert b"\r\nContent-Length: " in head and answer.split(b"\r\n\r\n", 1)[1], "a short body says what happened"
    assert strict.backend.connections == before, "no byte of a refused request may reach a backend"


def test_identical_content_lengths_are_tolerated(strict):
    answer = raw_request(strict.port, b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n"
                         b"Connection: close\r\n\r\nhello")
    assert status_of(answer) == 200
    assert b'"body_length": 5' in answer
    assert answer.count(b'["Content-Length", "5"]') == 1, "the backend gets one Content-Length"


def test_a_smuggled_request_after_a_good_one_is_refused_alone(strict):
    """Pipelined: a good request, then a malformed one. The first is answered, the second gets
    400, and the backend sees the first only."""
    before = strict.backend.requests
    data = (b"GET /first HTTP/1.1\r\n" + H + b"\r\n" +
            b"POST /second HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + b"\r\n")
    with socket.create_connection(("127.0.0.1", strict.port), timeout=5) as sock:
        sock.sendall(data)
        reader = sock.makefile("rb")
        first = read_response(reader)
        second = read_response(reader)
        assert reader.read() == b"", "the proxy closes after the 400"
    assert first.status == 200 and b'"/first"' in first.body
    assert second.status == 400 and second.header("Connection") == "close"
    # handle_one_request counts the request and the end of file that follows it
    wait_for(lambda: strict.backend.requests - before <= 2, what="backend to count its request")
    assert b"smuggled" not in strict.log().encode()


def test_a_bad_chunk_later_in_the_body_ends_both_connections(raw_proxy):
    """A chunked body is streamed, so its head and first chunks may reach the backend before
    a bad chunk arrives: then the client gets 400, and the backend connection is closed without
    the bad bytes (the backend sees an incomplete request, never a second one)."""
    got = {}
    backend_closed = threading.Event()

    def respond(conn, data):
        conn.settimeout(5)
        body = data.split(b"\r\n\r\n", 1)[1]
        try:
            while True:
                more = conn.recv(65536)
                if not more:
                    break
                body += more
        except OSError:
            pass
        got["body"] = body
        backend_closed.set()

    port, raw = raw_proxy(respond)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        wait_for(lambda: raw.received, what="the head to reach the backend")
        sock.sendall(b"5\r\nworldXXGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = sock.makefile("rb").read()
    assert status_of(answer) == 400 and b"Connection: close" in head_of(answer)
    assert backend_closed.wait(5), "the proxy must close the backend connection"
    assert got["body"] == b"5\r\nhello\r\n"
    assert len(raw.received) == 1


# -- backend answers -----------------------------------------------------------------------------
BAD_RESPONSES = [
    ("not HTTP", b"garbage\r\n\r\n"),
    ("bad status line", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"),
    ("HTTP/2 status line", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ("CL and TE", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("two different CL", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello"),
    ("space before colon", b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n"),
    ("NUL in value", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n"),
    ("bare LF", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n"),
    ("truncated head", b"HTTP/1.1 200 OK\r\nContent-Le"),
]


@pytest.fixture(scope="module")
def bad_backend(tmp_path_factory):
    """One proxy in front of a backend whose answer each test chooses."""
    tmp = tmp_path_factory.mktemp("bad_backend")
    behaviour = {}

    def respond(conn, data):
        conn.sendall(behaviour["response"])
        if behaviour["half_close"]:
            conn.shutdown(socket.SHUT_WR)
        conn.settimeout(5)
        try:
            if conn.recv(1) == b"":
                behaviour["dropped"].set()
        except OSError:
            behaviour["dropped"].set()

    raw = RawBackend(respond)
    port = free_port()
    proxy = Sozu(tmp, http_config(tmp, port, [raw.port], worker_count=1)).start()
    proxy.port, proxy.behaviour = port, behaviour
    yield proxy
    proxy.stop()
    raw.stop()


@pytest.mark.parametrize("case,response", BAD_RESPONSES, ids=[c[0] for c in BAD_RESPONSES])
def test_a_malformed_backend_answer_is_a_502_and_its_connection_is_dropped(bad_backend, case, response):
    dropped = threading.Event()
    bad_backend.behaviour.update(response=response, half_close=case == "truncated head", dropped=dropped)
    answer = raw_request(bad_backend.port, b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    assert status_of(answer) == 502, answer
    assert b"Connection: close" in head_of(answer)
    assert dropped.wait(5), "the proxy must close a backend connection that misbehaved"
