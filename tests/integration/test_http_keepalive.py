"""Keep-alive on both sides: client connections carry many requests, idle backend connections
are pooled per worker and reused (counted at the backend), a stale pooled connection is
retried transparently when the request may be repeated."""
import socket
import threading

import pytest

from tests.integration.harness import (Backend, Sozu, ThreadedServer, free_port, http_apps_config,
                                       http_config, read_response, request, wait_for)

H = b"Host: localhost\r\n"


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    """One worker (so one backend pool) in front of one backend; tests count the backend
    connections they cause."""
    tmp = tmp_path_factory.mktemp("keepalive")
    b = Backend("ka")
    port = free_port()
    s = Sozu(tmp, http_config(tmp, port, [b.port], worker_count=1)).start()
    s.port, s.backend = port, b
    yield s
    s.stop()
    b.stop()


def new_backend_connections(proxy, action) -> int:
    before = proxy.backend.connections
    action()
    return proxy.backend.connections - before


def test_requests_on_one_client_connection_reuse_one_backend_connection(one_worker):
    import http.client
    request(one_worker.port, "GET", "/")  # one idle connection in the pool
    conn = http.client.HTTPConnection("127.0.0.1", one_worker.port, timeout=5)

    def ten():
        for i in range(10):
            assert request(one_worker.port, "GET", f"/{i}", conn=conn).status == 200
            assert conn.sock is not None, "the client connection stays open"

    assert new_backend_connections(one_worker, ten) == 0
    conn.close()


def test_the_backend_pool_is_shared_by_the_clients_of_a_worker(one_worker):
    def ten():
        for i in range(10):
            assert request(one_worker.port, "GET", f"/{i}").status == 200  # a new client connection each

    request(one_worker.port, "GET", "/")
    assert new_backend_connections(one_worker, ten) == 0


def test_concurrent_clients_then_reuse(one_worker):
    def client():
        for _ in range(5):
            assert request(one_worker.port, "GET", "/slow/0.05").status == 200

    def concurrently():
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert new_backend_connections(one_worker, concurrently) <= 8

    def sequentially():
        for _ in range(10):
            assert request(one_worker.port, "GET", "/").status == 200

    assert new_backend_connections(one_worker, sequentially) == 0, "idle pooled connections are reused"


def test_a_backend_closing_its_idle_connections_costs_no_request(one_worker):
    assert request(one_worker.port, "GET", "/").status == 200
    one_worker.backend.close_connections()  # the backend's keep-alive timeout
    wait_for(lambda: one_worker.backend.open_connections == 0, what="the backend to close")

    def two():
        assert request(one_worker.port, "GET", "/").status == 200
        assert request(one_worker.port, "GET", "/").status == 200

    assert new_backend_connections(one_worker, two) == 1


def test_a_post_right_after_the_backend_closed_its_idle_connection_succeeds(one_worker):
    """A request that could not be repeated must not be sent on a pooled connection that the
    backend has already closed, however recently it was used."""
    for _ in range(3):
        assert request(one_worker.port, "GET", "/").status == 200
        one_worker.backend.close_connections()
        wait_for(lambda: one_worker.backend.open_connections == 0, what="the backend to close")
        response = request(one_worker.port, "POST", "/", body=b"not twice")
        assert response.status == 200, response


def test_client_connection_close_is_honoured(one_worker):
    with socket.create_connection(("127.0.0.1", one_worker.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        reader = sock.makefile("rb")
        response = read_response(reader)
        assert response.status == 200 and response.header("Connection") == "close"
        assert reader.read() == b""
    assert new_backend_connections(one_worker, lambda: request(one_worker.port, "GET", "/")) == 0, \
        "the client's Connection: close is not the backend's"


def test_backend_connection_close_keeps_the_client_connection(raw_proxy):
    def respond(conn, data):
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")

    port, raw = raw_proxy(respond)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
            response = read_response(reader)
            assert response.body == b"ok" and response.header("Connection") is None
    assert len(raw.received) == 3, "one backend connection per request: each was closed"


def test_keep_alive_across_applications(tmp_path, sozu, backend):
    a, b = backend("a"), backend("b")
    port = free_port()
    sozu(http_apps_config(tmp_path, port, {
        "a": {"fronts": [("a.test", "")], "backends": [f"127.0.0.1:{a.port}"]},
        "b": {"fronts": [("b.test", "")], "backends": [f"127.0.0.1:{b.port}"]}}))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = sock.makefile("rb")
        for host in (b"a.test", b"b.test", b"a.test", b"b.test"):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            assert read_response(reader).header("X-Backend") == host[:1].decode()
    assert a.connections == 1 and b.connections == 1


class OneShotBackend(ThreadedServer):
    """Answers the first request of each connection (keep-alive), then closes the connection
    when the next request arrives, without answering: the race between a backend's keep-alive
    timeout and the proxy reusing the connection, made certain."""

    def __init__(self, extra: bytes = b""):
        self.extra = extra
        self.answered = 0
        super().__init__()

    def handle(self, conn):
        with conn:
            reader = conn.makefile("rb")
            head = b""
            while (line := reader.readline()) not in (b"\r\n", b""):
                head += line
            length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
            if length:
                reader.read(length[0])
            self.answered += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + self.extra)
            reader.readline()  # the next request: close without a word


@pytest.fixture
def one_shot(tmp_path, sozu):
    b = OneShotBackend()
    port = free_port()
    s = sozu(http_config(tmp_path, port, [b.port], worker_count=1))
    s.port, s.backend = port, b
    yield s
    b.stop()


def test_a_stale_pooled_connection_is_retried_for_idempotent_requests(one_shot):
    for method in ("GET", "GET", "HEAD", "DELETE", "PUT", "GET"):
        response = request(one_shot.port, method, "/")
        assert response.status == 200, (method, response)
    assert one_shot.backend.answered == 6
    assert one_shot.backend.connections == 6, "each retry opened a fresh connection"


def test_a_stale_pooled_connection_is_not_retried_for_a_post(one_shot):
    assert request(one_shot.port, "GET", "/").status == 200
    response = request(one_shot.port, "POST", "/", body=b"hello")
    assert response.status == 502, "a POST may have been acted on: never repeated"
    assert response.header("Connection") == "close"
    assert one_shot.backend.answered == 1


def test_a_backend_connection_with_extra_bytes_is_not_reused(tmp_path, sozu):
    b = OneShotBackend(extra=b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
    port = free_port()
    sozu(http_config(tmp_path, port, [b.port], worker_count=1))
    try:
        for _ in range(3):
            response = request(port, "GET", "/")
            assert response.status == 200 and response.body == b"ok"
        assert b.connections == 3
    finally:
        b.stop()


def test_an_http10_backend_answer_keeps_the_client_connection(raw_proxy):
    """sozu speaks HTTP/1.1 to its clients whatever the backend's version, so an HTTP/1.1
    client keeps the connection that sozu keeps open."""
    def respond(conn, data):
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")

    port, raw = raw_proxy(respond)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, sock.makefile("rb") as reader:
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
            response = read_response(reader)
            assert (response.version, response.body) == ("HTTP/1.1", b"ok")
            assert response.header("Connection") is None
    assert len(raw.received) == 2, "an HTTP/1.0 backend connection is not reused"


def test_many_concurrent_keep_alive_clients_get_their_own_answers(one_worker):
    """50 clients, 6 requests each with bodies of their own, over pooled backend connections:
    every answer belongs to its request (no desync between exchanges)."""
    import hashlib
    import http.client
    import json
    failures = []

    def client(n: int):
        conn = http.client.HTTPConnection("127.0.0.1", one_worker.port, timeout=10)
        try:
            for i in range(6):
                body = b"%d-%d-" % (n, i) * (n * 37 + i)
                response = request(one_worker.port, "POST", f"/c{n}/r{i}", body=body, conn=conn)
                if response.status != 200:
                    failures.append((n, i, response.status, response.body[:300]))
                    continue
                seen = json.loads(response.body)
                if (seen["path"], seen["body_sha256"]) != (f"/c{n}/r{i}", hashlib.sha256(body).hexdigest()):
                    failures.append((n, i, seen["path"]))
        except Exception as error:  # collected: an assertion in a thread would be lost
            failures.append((n, repr(error)))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_a_drain_serves_new_connections_and_closes_idle_ones(tmp_path, sozu, backend):
    """When a worker drains (upgrade, soft stop), a connection it accepted whose request has not
    arrived yet is still served: no client retries a request on a connection it just opened. An
    idle keep-alive connection is closed at once (clients retry those)."""
    import os
    import signal
    b = backend("drain")
    port = free_port()
    s = sozu(http_config(tmp_path, port, [b.port], worker_count=1))
    pid = s.workers()[0]["pid"]
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    idle.sendall(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    idle_reader = idle.makefile("rb")
    assert read_response(idle_reader).status == 200
    fresh = socket.create_connection(("127.0.0.1", port), timeout=5)

    def active():
        return s.order("METRICS")["data"]["workers"]["0"]["active_connections"]

    wait_for(lambda: active() == 2, what="the worker to hold both connections")
    os.kill(pid, signal.SIGTERM)  # this worker alone drains
    wait_for(lambda: "soft stop: draining" in s.log(), what="the drain to begin")
    assert idle_reader.read() == b"", "the idle keep-alive connection is closed"
    with fresh, fresh.makefile("rb") as reader:
        fresh.sendall(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        response = read_response(reader)
        assert response.status == 200 and response.header("Connection") == "close"
    idle_reader.close()
    idle.close()


POISON = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned"


class PoisoningBackend(ThreadedServer):
    """Answers /first with `answer`, then, once the test says so (`go`), sends `extra` on the
    same connection, which stays open: bytes that answer nothing, arriving while the connection
    is idle in the proxy's pool. Every other request is answered with its own path, so a
    client can tell its answer from another's."""

    def __init__(self, answer: bytes, extra: bytes):
        self.answer, self.extra = answer, extra
        self.go, self.poisoned, self.closed_by_proxy = threading.Event(), threading.Event(), threading.Event()
        super().__init__()

    def handle(self, conn):
        with conn, conn.makefile("rb") as reader:
            while True:
                try:
                    line = reader.readline()
                    while (header := reader.readline()) not in (b"\r\n", b""):
                        pass
                except ConnectionResetError:  # closed with unread bytes: the kernel resets
                    line = header = b""
                if not line or not header:
                    self.closed_by_proxy.set()
                    return
                path = line.split(b" ")[1]
                if path != b"/first":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
                    continue
                conn.sendall(self.answer)
                if self.go.wait(10):
                    conn.sendall(self.extra)
                    self.poisoned.set()


@pytest.mark.parametrize("method, answer, extra", [
    ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", POISON),
    ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(POISON), POISON),
    ("GET", b"HTTP/1.1 204 No Content\r\n\r\n", POISON),
], ids=["after a Content-Length body", "as the body of a HEAD answer", "after a 204"])
def test_bytes_on_an_idle_backend_connection_answer_no_later_request(tmp_path, sozu, method, answer, extra):
    b = PoisoningBackend(answer, extra)
    port = free_port()
    sozu(http_config(tmp_path, port, [b.port], worker_count=1))  # one worker: one pool
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as first, first.makefile("rb") as reader:
            first.sendall(b"%s /first HTTP/1.1\r\n%s\r\n" % (method.encode(), H))
            assert read_response(reader, method).status in (200, 204)
            b.go.set()  # the backend connection is idle in the pool now, or about to be
            assert b.poisoned.wait(5)
            # The next request, from another client: it must not get the bytes that were waiting.
            with socket.create_connection(("127.0.0.1", port), timeout=5) as second:
                second.sendall(b"GET /second HTTP/1.1\r\n" + H + b"\r\n")
                response = read_response(second.makefile("rb"))
            assert (response.status, response.body) == (200, b"/second")
            first.sendall(b"GET /third HTTP/1.1\r\n" + H + b"\r\n")
            response = read_response(reader)
            assert (response.status, response.body) == (200, b"/third")
        assert b.closed_by_proxy.wait(5), "the poisoned connection was closed, not kept"
        assert b.connections == 2
    finally:
        b.stop()
