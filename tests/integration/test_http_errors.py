"""Errors answered clearly (short body, `Connection: close`, logged once), backends failing at
every stage, clients vanishing at every stage: the worker never goes down and goes on serving."""
import socket
import struct
import threading

import pytest

from tests.integration.harness import (Backend, RawBackend, Sozu, free_port, http_apps_config, request, wait_for)

H = b"Host: localhost\r\n"


def misbehaving(conn, data):
    path = data.split(b" ")[1]
    if path == b"/silent-close":
        return  # closes without a word
    if path == b"/reset":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return
    if path == b"/short-body":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        return
    if path == b"/bad-chunk":
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n")
        conn.recv(1)
        return
    if path == b"/short-chunked":
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        return


@pytest.fixture(scope="module")
def errors(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    # no Connection header in the file: sozu closes after it, and says so
    (tmp / "503.http").write_text("HTTP/1.1 503 Service Unavailable\nContent-Length: 9\nConnection: keep-alive\n\n"
                                  "listener\n")
    good = Backend("good")
    raw = RawBackend(misbehaving)
    port = free_port()
    apps = {
        "app": {"fronts": [("localhost", "")], "backends": [f"127.0.0.1:{good.port}"]},
        "bad": {"fronts": [("bad.test", "")], "backends": [f"127.0.0.1:{raw.port}"]},
        "dead": {"fronts": [("dead.test", "")], "backends": [f"127.0.0.1:{free_port()}"]},
    }
    proxy = Sozu(tmp, http_apps_config(tmp, port, apps, listener_extra='answer_503 = "503.http"')).start()
    proxy.port, proxy.good = port, good
    proxy.pid = proxy.workers()[0]["pid"]
    yield proxy
    proxy.stop()
    good.stop()
    raw.stop()


def raw_exchange(port, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize("path", ["/silent-close", "/reset"])
def test_a_backend_that_closes_without_answering_is_a_502(errors, path):
    response = request(errors.port, "GET", path, host="bad.test")
    assert response.status == 502
    assert response.header("Connection") == "close"
    assert b"502 Bad Gateway" in response.body


def test_every_error_answer_has_a_body_and_connection_close(errors):
    for host, path, status, text in (("nowhere.test", "/", 404, b"No application"),
                                     ("dead.test", "/", 503, b"listener\n"),
                                     ("bad.test", "/silent-close", 502, b"invalid or incomplete")):
        response = request(errors.port, "GET", path, host=host)
        assert response.status == status
        assert response.header("Connection") == "close"
        assert text in response.body


def test_an_error_is_logged_once_with_its_request(errors):
    def count():
        return errors.log().count("closed the connection without answering")

    def mark(name: str) -> None:
        """A request whose access line, once written, follows every line of earlier requests
        (one worker, serving in order)."""
        request(errors.port, "GET", "/", host=f"{name}.test")
        wait_for(lambda: f"{name}.test" in errors.log(), what="the access log")

    mark("before")
    before = count()
    request(errors.port, "GET", "/silent-close?once", host="bad.test")
    mark("after")
    assert count() - before == 1
    line = [line for line in errors.log().splitlines() if "without answering" in line][-1]
    assert "WARN" in line and "GET bad.test/silent-close" in line and "502" in line


def test_a_truncated_response_body_ends_the_client_connection(errors):
    answer = raw_exchange(errors.port, b"GET /short-body HTTP/1.1\r\nHost: bad.test\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 100" in head
    assert body == b"only ten b", "the client sees a short body and a close: a truncation, never a hang"


@pytest.mark.parametrize("path,body", [("/bad-chunk", b"5\r\nhello\r\n"), ("/short-chunked", b"5\r\nhello\r\n")])
def test_a_bad_or_truncated_chunked_response_ends_the_client_connection(errors, path, body):
    answer = raw_exchange(errors.port, b"GET %s HTTP/1.1\r\nHost: bad.test\r\n\r\n" % path.encode())
    head, _, got = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body.startswith(got), "nothing from the fault on, and no last chunk: the client can tell"


def test_an_error_answer_reaches_a_client_still_sending_its_body(errors):
    """404 to a 4 MiB upload: the proxy reads the rest before closing (no reset that would
    destroy the answer), so the client gets its 404."""
    response = request(errors.port, "POST", "/", host="nowhere.test", body=b"x" * (4 << 20))
    assert response.status == 404


def test_clients_vanishing_at_every_stage_do_not_hurt_the_worker(errors):
    def vanish(data: bytes, read: int = 0, reset: bool = False):
        sock = socket.create_connection(("127.0.0.1", errors.port), timeout=5)
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if data:
            sock.sendall(data)
        if read:
            sock.recv(read)
        sock.close()

    for reset in (False, True):
        vanish(b"", reset=reset)                                             # connect only
        vanish(b"GET / HTTP/1.1\r\nHo", reset=reset)                         # mid-head
        vanish(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1000\r\n\r\nabc", reset=reset)  # mid-body
        vanish(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nab", reset=reset)
        vanish(b"GET /size/20000000 HTTP/1.1\r\n" + H + b"\r\n", read=1000, reset=reset)  # mid-download
        vanish(b"GET /slow/0.3 HTTP/1.1\r\n" + H + b"\r\n", reset=reset)    # while the backend thinks
        vanish(b"GET /chunked/5000000 HTTP/1.1\r\n" + H + b"\r\n", read=100, reset=reset)

    def serving():
        return request(errors.port, "GET", "/size/5").body == b"xxxxx"

    wait_for(serving, what="the worker to serve")
    assert errors.workers()[0]["pid"] == errors.pid, "the same worker, never restarted"
    wait_for(lambda: errors.good.active == 0, what="the backend to finish the abandoned requests")
    assert request(errors.port, "GET", "/slow/0").status == 200
    log = errors.log()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


def test_many_bad_requests_at_once(errors):
    """Garbage from many connections in parallel: each gets its 400, the worker goes on."""
    results = []

    def bad():
        results.append(raw_exchange(errors.port, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")[:12])

    threads = [threading.Thread(target=bad) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [b"HTTP/1.1 400"] * 50
    assert request(errors.port, "GET", "/").status == 200
