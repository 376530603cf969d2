"""A deadline bounds the state that armed it, never the next one: a request whose head arrived
late in its request_timeout is not cut short while its backend connect is still in progress
(that would mark a healthy backend down and answer 503)."""
import socket
import threading
import time

import pytest

from tests.integration.harness import Sozu, free_port, http_apps_config, read_response

REQUEST_TIMEOUT = 2
# The connect must outlast the head's deadline: long enough for the kernel's SYN retries (1 s,
# then 2 s and 4 s more), one of which a busy backend's freed accept queue lets through.
TIMEOUTS = f"front_timeout = 10\nback_timeout = 5\nconnect_timeout = 10\nrequest_timeout = {REQUEST_TIMEOUT}"


class BusyBackend:
    """A healthy backend that is slow to accept: its accept queue is full (listen(0) and one
    queued connection) until release(), so a connect to it waits for the kernel's SYN retries;
    after release() it answers every request 200."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port))
        self.served = 0

    def release(self) -> None:
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        queued, _ = self.listener.accept()  # the filler: room in the queue from now on
        queued.close()
        self.filler.close()
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while True:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        data += chunk
                    data = data[data.index(b"\r\n\r\n") + 4:]
                    self.served += 1
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            except OSError:
                return

    def close(self) -> None:
        self.filler.close()
        self.listener.close()


@pytest.fixture
def busy(tmp_path):
    backend = BusyBackend()
    port = free_port()
    apps = {"app": {"fronts": [("localhost", "")], "backends": [f"127.0.0.1:{backend.port}"]}}
    proxy = Sozu(tmp_path, http_apps_config(tmp_path, port, apps, timeouts=TIMEOUTS)).start()
    proxy.port = port
    yield proxy, backend
    proxy.stop()
    backend.close()


def test_a_late_head_does_not_time_out_the_backend_connect(busy):
    proxy, backend = busy
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        accepted = time.monotonic()
        # The head arrives halfway through request_timeout: in time. Its connect then hangs
        # past the point where request_timeout (counted from the accept) ends.
        time.sleep(REQUEST_TIMEOUT / 2)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        time.sleep(max(0.0, accepted + REQUEST_TIMEOUT + 0.5 - time.monotonic()))
        backend.release()
        reader = sock.makefile("rb")
        first = read_response(reader)
        assert first.status == 200, "the connect is bounded by connect_timeout, not by the head's deadline"
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_response(reader).status == 200
    assert "is down" not in proxy.log(), "a healthy backend was marked down"
    assert backend.served == 2
