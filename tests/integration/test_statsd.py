"""statsd by UDP: a receiver in the test counts what the master sends for the traffic it sent;
an address nobody listens on changes nothing for the traffic."""
from __future__ import annotations

import socket
import threading
import time

from tests.integration.harness import free_port, http_apps_config, request, wait_for


class Receiver:
    """A UDP statsd server on a free port: the lines it got."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            self.lines.extend(data.decode().split("\n"))

    def stop(self) -> None:
        self.sock.close()


def config(tmp_path, port, backend_port, metrics: str) -> str:
    return http_apps_config(tmp_path, port, {"app": {"fronts": [("localhost", "")],
                                                     "backends": [f"127.0.0.1:{backend_port}"]}},
                            worker_count=2, extra=f"[metrics]\n{metrics}")


def test_tagged_counters_gauges_and_timings(tmp_path, sozu, backend):
    receiver = Receiver()
    try:
        b = backend("b1")
        port = free_port()
        sozu(config(tmp_path, port, b.port, f'address = "127.0.0.1:{receiver.port}"\nprefix = "edge"\n'
                                             'tagged_metrics = true\nflush_interval = 1'))
        for _ in range(5):
            assert request(port).status == 200
        tag = f"|#application:app,backend:127.0.0.1:{b.port},status_class:2xx"
        wait_for(lambda: sum(float(line.split(":", 1)[1].split("|")[0]) for line in list(receiver.lines)
                             if line.startswith("edge.http.requests:") and line.endswith(tag)) == 5,
                 10, what="5 requests counted by statsd")
        assert any(line.startswith("edge.active_connections:") and line.endswith("|g")
                   for line in receiver.lines)
        assert any(line.startswith("edge.backend.up:1|g|#application:app,") for line in receiver.lines)
        timings = [line for line in receiver.lines if line.startswith("edge.http.request_time:")]
        assert timings and all("|ms" in line and line.endswith("|#application:app") for line in timings)
        # n timings in one bucket are one line with a sample rate of 1/n
        assert sum(round(1 / float(line.split("|@")[1].split("|")[0])) if "|@" in line else 1
                   for line in timings) == 5
    finally:
        receiver.stop()


def test_untagged_names(tmp_path, sozu, backend):
    receiver = Receiver()
    try:
        b = backend("b1")
        port = free_port()
        sozu(config(tmp_path, port, b.port, f'address = "127.0.0.1:{receiver.port}"'))
        for _ in range(3):
            assert request(port, path="/status/404").status == 404
        name = f"sozu.http.requests.app.127_0_0_1_{b.port}.4xx:"
        wait_for(lambda: sum(float(line[len(name):].split("|")[0]) for line in list(receiver.lines)
                             if line.startswith(name)) == 3, 10, what="3 requests counted by statsd")
    finally:
        receiver.stop()


def test_an_unreachable_address_never_slows_traffic(tmp_path, sozu, backend):
    b = backend("b1")
    port, nobody = free_port(), free_port()
    s = sozu(config(tmp_path, port, b.port, f'address = "127.0.0.1:{nobody}"\nflush_interval = 1'))
    started, served = time.monotonic(), 0
    while time.monotonic() - started < 2.5:  # across two flushes at least
        assert request(port, timeout=2).status == 200
        served += 1
    assert served > 50
    assert s.ctl("status").returncode == 0
    assert "Traceback" not in s.log()
