"""Every timeout of the configuration, enforced on a real proxy with small values:
front_timeout (idle keep-alive, stalled body), request_timeout (slowloris, silent connections),
back_timeout (504), connect_timeout (a backend that never accepts)."""
import socket
import time

import pytest

from tests.integration.harness import (Backend, Sozu, free_port, http_apps_config, read_response, request)

H = b"Host: localhost\r\n"
TIMEOUTS = "front_timeout = 2\nrequest_timeout = 1\nback_timeout = 1\nconnect_timeout = 1"


class Blackhole:
    """A port whose accept queue is full: a connect to it hangs until the client gives up."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.held = [socket.create_connection(("127.0.0.1", self.port))]  # fills the queue

    def close(self):
        for sock in self.held:
            sock.close()
        self.listener.close()


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("timeouts")
    good = Backend("good")
    hole, hole2 = Blackhole(), Blackhole()
    port = free_port()
    apps = {
        "app": {"fronts": [("localhost", "")], "backends": [f"127.0.0.1:{good.port}"]},
        "mixed": {"fronts": [("mixed.test", "")],
                  "backends": [f"127.0.0.1:{hole.port}", f"127.0.0.1:{good.port}"]},
        "dead": {"fronts": [("dead.test", "")], "backends": [f"127.0.0.1:{hole2.port}"]},
    }
    proxy = Sozu(tmp, http_apps_config(tmp, port, apps, timeouts=TIMEOUTS)).start()
    proxy.port = port
    yield proxy
    proxy.stop()
    good.stop()
    hole.close()
    hole2.close()


def time_until_closed(sock, limit: float = 6.0) -> tuple[float, bytes]:
    """Seconds until the proxy closes the connection, and what it sent meanwhile."""
    started = time.monotonic()
    sock.settimeout(limit)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return time.monotonic() - started, data
        data += chunk


def test_idle_keep_alive_connection_is_closed_after_front_timeout(timed):
    with socket.create_connection(("127.0.0.1", timed.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        reader = sock.makefile("rb")
        assert read_response(reader).status == 200
        started = time.monotonic()
        assert reader.read() == b"", "closed quietly: no 408 for a connection between requests"
        assert 1.7 < time.monotonic() - started < 3.5


def test_a_connection_that_never_sends_is_closed_after_request_timeout(timed):
    with socket.create_connection(("127.0.0.1", timed.port), timeout=5) as sock:
        elapsed, data = time_until_closed(sock)
    assert data == b""
    assert 0.8 < elapsed < 1.8, "request_timeout (1 s) from the accept, not front_timeout (2 s)"


def test_slowloris_gets_408_at_request_timeout(timed):
    with socket.create_connection(("127.0.0.1", timed.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        answer = b""
        sock.settimeout(0.1)
        for byte in b"X-Slow: " + b"a" * 100:  # one byte every 100 ms, never the end of the head
            try:
                answer += sock.recv(65536)
                break
            except socket.timeout:
                pass
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
        sock.settimeout(5)
        elapsed, rest = time_until_closed(sock)
        answer += rest
        total = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"Connection: close" in answer
    assert total < 2.2, f"held the slot {total:.1f}s"


def test_slowloris_on_a_keep_alive_connection_gets_408(timed):
    with socket.create_connection(("127.0.0.1", timed.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        assert read_response(reader).status == 200
        sock.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        response = read_response(reader)
        assert response.status == 408 and response.header("Connection") == "close"
        assert 0.8 < time.monotonic() - started < 1.8


def test_a_stalled_request_body_gets_408_after_front_timeout(timed):
    with socket.create_connection(("127.0.0.1", timed.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\n0123456789")
        started = time.monotonic()
        response = read_response(sock.makefile("rb"))
        assert response.status == 408 and response.header("Connection") == "close"
        assert 1.7 < time.monotonic() - started < 3.5


def test_a_slow_backend_gets_504_after_back_timeout(timed):
    started = time.monotonic()
    response = request(timed.port, "GET", "/slow/3")
    elapsed = time.monotonic() - started
    assert response.status == 504 and response.header("Connection") == "close"
    assert b"did not answer in time" in response.body
    assert 0.8 < elapsed < 2.0


def test_a_backend_that_never_accepts_costs_connect_timeout_once(timed):
    """The first request that tries the black hole waits connect_timeout, then goes to the other
    backend; the black hole rests in backoff, so the next requests do not wait."""
    started = time.monotonic()
    for _ in range(6):
        response = request(timed.port, "GET", "/", host="mixed.test")
        assert response.status == 200 and response.header("X-Backend") == "good"
    assert time.monotonic() - started < 1.9


def test_an_application_whose_only_backend_never_accepts_answers_503(timed):
    started = time.monotonic()
    response = request(timed.port, "GET", "/", host="dead.test")
    assert response.status == 503 and response.header("Connection") == "close"
    assert 0.8 < time.monotonic() - started < 1.8
