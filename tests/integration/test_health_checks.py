"""Active health checks with real processes: backends that stop, hang, answer garbage and come
back while a load client runs, and the workers that all follow the master's checks."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.integration.harness import (Backend, EchoHandler, free_port, http_apps_config,
                                       routed_to, wait_for)
from tests.integration.load import Load, LoadClient

INTERVAL, TIMEOUT, RISE, FALL = 0.2, 0.1, 2, 2
CHECK = (f'health_check = {{ path = "/health", expected_body = "ready", interval = {INTERVAL}, '
         f'timeout = {TIMEOUT}, rise = {RISE}, fall = {FALL} }}')
# The bounds the checks promise (fall x interval + timeout, rise x interval), plus room for a
# loaded machine: these tests check the mechanism; bench/health_checks.py measures the figures.
SLACK = 3.0
OUT_WITHIN = FALL * INTERVAL + TIMEOUT + SLACK
BACK_WITHIN = RISE * INTERVAL + SLACK


class HealthHandler(EchoHandler):
    """The echo backend, whose /health says "ready" unless its server's `health` mode says to
    answer garbage or to hang (until the mode changes)."""

    def _answer(self) -> None:
        with self.server.lock:
            self.server.busy.add(self.connection)
        try:
            self._health_or_echo()
        finally:
            with self.server.lock:
                self.server.busy.discard(self.connection)
            if self.server.closing:
                self.close_connection = True

    def _health_or_echo(self) -> None:
        if self.path != "/health":
            return super()._answer()
        mode = self.server.health
        if mode == "garbage":
            self.wfile.write(b"\x00\x01 not http at all\r\n\r\n")
            self.close_connection = True
            return
        if mode == "hang":
            self.server.unhung.wait(10)
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"ready")


class CheckedBackend(Backend):
    def __init__(self, name: str, port: int = 0):
        super().__init__(name, HealthHandler, port)
        self.server.busy = set()
        self.server.closing = False
        self.set_health("ok")

    def set_health(self, mode: str) -> None:
        self.server.health = mode
        if mode == "hang":
            self.server.unhung = threading.Event()
        elif getattr(self.server, "unhung", None) is not None:
            self.server.unhung.set()

    def stop(self) -> None:
        """As a server stops gracefully: no new connection, answers under way end, idle
        keep-alive connections are closed."""
        self.set_health("ok")
        self.server.closing = True
        # The listening socket stops first, so that new connections are refused at once (and
        # tried elsewhere) rather than queued in its backlog while the accept loop winds down,
        # and reset when it closes.
        try:
            self.server.socket.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        super().stop()
        with self.server.lock:
            idle = self.server.open_sockets - self.server.busy
        for sock in idle:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def health(s, backend_id: str) -> set:
    """What the master and every worker say of a backend: a set of up/down (True/False)."""
    answer = s.order("QUERY", {"type": "BACKENDS"})
    assert answer["status"] == "OK", answer
    views = [answer["data"]["master"], *answer["data"]["workers"].values()]
    assert len(views) == 3  # the master and both workers answered
    return {row["up"] for rows in views for row in rows if row["backend_id"] == backend_id}


def wait_health(s, backend_id: str, up: bool, within: float) -> float:
    started = time.monotonic()
    wait_for(lambda: health(s, backend_id) == {up}, within,
             what=f"{backend_id} {'up' if up else 'down'} in the master and every worker")
    return time.monotonic() - started


@pytest.fixture
def checked(tmp_path, sozu):
    """Two checked backends (b1, b2) behind a two-worker sozu; the backends are stopped at the end."""
    backends = [CheckedBackend("b1"), CheckedBackend("b2")]
    port = free_port()
    s = sozu(http_apps_config(tmp_path, port, {"app": {
        "fronts": [("localhost", "")],
        "backends": [{"address": f"127.0.0.1:{b.port}", "backend_id": b.server.name} for b in backends],
        "extra": CHECK}}, worker_count=2))
    s.port = port
    s.backends = backends
    yield s
    for b in s.backends:
        b.stop()


def test_backends_leave_and_rejoin_without_a_failed_request(checked):
    s = checked
    b1 = s.backends[0]
    with Load(LoadClient(s.port, name="keep-alive"),
              LoadClient(s.port, keep_alive=False, name="new-connection")) as load:
        wait_for(lambda: all(c.ok > 20 for c in load.clients), 20, what="load flowing")

        b1.stop()  # stopped
        wait_health(s, "b1", False, OUT_WITHIN)
        served = [c.ok for c in load.clients]
        wait_for(lambda: all(c.ok > n + 20 for c, n in zip(load.clients, served)), 20,
                 what="load flowing to b2 alone")
        b1 = s.backends[0] = CheckedBackend("b1", b1.port)  # brought back on its address
        wait_health(s, "b1", True, BACK_WITHIN)
        wait_for(lambda: b1.requests > 10, 20, what="b1 serving again")

        b1.set_health("garbage")  # broken: its checks get garbage, its traffic is still fine
        wait_health(s, "b1", False, OUT_WITHIN)
        count = b1.requests
        served = [c.ok for c in load.clients]
        wait_for(lambda: all(c.ok > n + 20 for c, n in zip(load.clients, served)), 20,
                 what="load flowing while b1 is out")
        # Only its checks reach it now (one every interval, at most a few per wait above).
        assert b1.requests - count < 40
        b1.set_health("ok")
        wait_health(s, "b1", True, BACK_WITHIN)

        b1.set_health("hang")  # its checks never get an answer
        wait_health(s, "b1", False, OUT_WITHIN)
        b1.set_health("ok")
        wait_health(s, "b1", True, BACK_WITHIN)
    for client in load.clients:
        assert client.failures == [], client.summary()
    log = s.log()
    # The reason of each change is logged once, not once per check.
    assert log.count("b1 (127.0.0.1:%d) of app is down: connect failed: ECONNREFUSED" % b1.port) == 1
    assert log.count("is down: not an HTTP answer: '\\x00\\x01 not http at all") == 1
    assert log.count(f"is down: no answer within {TIMEOUT:g} s") == 1
    assert log.count("b1 (127.0.0.1:%d) of app is up" % b1.port) == 3


def test_backups_take_over_when_every_backend_is_down(tmp_path, sozu):
    primary, spare = CheckedBackend("primary"), CheckedBackend("spare")
    try:
        port = free_port()
        s = sozu(http_apps_config(tmp_path, port, {"app": {
            "fronts": [("localhost", "")],
            "backends": [{"address": f"127.0.0.1:{primary.port}", "backend_id": "primary"},
                         {"address": f"127.0.0.1:{spare.port}", "backend_id": "spare", "backup": True}],
            "extra": CHECK}}, worker_count=2))
        assert {routed_to(port, "localhost")[1] for _ in range(4)} == {"primary"}
        primary.set_health("garbage")
        wait_health(s, "primary", False, OUT_WITHIN)
        assert {routed_to(port, "localhost")[1] for _ in range(4)} == {"spare"}
        primary.set_health("ok")
        wait_health(s, "primary", True, BACK_WITHIN)
        assert {routed_to(port, "localhost")[1] for _ in range(4)} == {"primary"}
        spare.set_health("garbage")  # a backup is checked too, and shown
        wait_health(s, "spare", False, OUT_WITHIN)
        listing = s.ctl("backend", "list", "--id=app")
        assert listing.returncode == 0, listing.stderr
        rows = {line.split()[1]: line for line in listing.stdout.splitlines()[1:]}
        assert " active  up " in rows["primary"] and " down " in rows["spare"]
        assert "not an HTTP answer" in rows["spare"]
        status = s.ctl("status")
        assert status.returncode == 0, status.stderr
        assert "backends with health checks: 1 up, 1 down" in status.stdout
        assert f"down: app spare (127.0.0.1:{spare.port}) since " in status.stdout
    finally:
        primary.stop()
        spare.stop()


def test_checks_are_set_and_removed_at_runtime(tmp_path, sozu):
    b1, b2 = CheckedBackend("b1"), CheckedBackend("b2")
    try:
        port = free_port()
        s = sozu(http_apps_config(tmp_path, port, {"app": {
            "fronts": [("localhost", "")],
            "backends": [{"address": f"127.0.0.1:{b.port}", "backend_id": b.server.name}
                         for b in (b1, b2)]}}, worker_count=2))
        b1.set_health("garbage")
        time.sleep(0)  # no checks yet: off by default
        assert {row["checked"] for row in s.order("QUERY", {"type": "BACKENDS"})["data"]["master"]} == {False}
        done = s.ctl("health-check", "set", "--id=app", "--path=/health", "--expected-body=ready",
                     f"--interval={INTERVAL}", f"--check-timeout={TIMEOUT}", f"--rise={RISE}",
                     f"--fall={FALL}")
        assert done.returncode == 0, done.stderr
        wait_health(s, "b1", False, OUT_WITHIN)
        assert {routed_to(port, "localhost")[1] for _ in range(4)} == {"b2"}
        bad = s.ctl("health-check", "set", "--id=app", "--interval=1", "--check-timeout=2")
        assert bad.returncode == 1 and "timeout: expected at most the interval" in bad.stderr
        done = s.ctl("health-check", "remove", "--id=app")
        assert done.returncode == 0, done.stderr
        # Off: the verdicts go with the check, and b1 serves again in every worker.
        wait_for(lambda: health(s, "b1") == {None}, 5, what="b1 unchecked everywhere")
        assert {routed_to(port, "localhost")[1] for _ in range(4)} == {"b1", "b2"}
    finally:
        b1.stop()
        b2.stop()


def test_tcp_checks(tmp_path, sozu):
    b1, b2 = CheckedBackend("b1"), CheckedBackend("b2")
    try:
        port = free_port()
        s = sozu(http_apps_config(tmp_path, port, {"app": {
            "fronts": [("localhost", "")],
            "backends": [{"address": f"127.0.0.1:{b.port}", "backend_id": b.server.name} for b in (b1, b2)],
            "extra": CHECK.replace('path = "/health", expected_body = "ready"', 'protocol = "tcp"')}},
            worker_count=2))
        b1.set_health("garbage")  # a TCP check only connects: still up
        b1_port = b1.port
        b1.stop()
        wait_health(s, "b1", False, OUT_WITHIN)
        b1 = CheckedBackend("b1", b1_port)
        wait_health(s, "b1", True, BACK_WITHIN)
        assert "b1 (127.0.0.1:%d) of app is down: connect failed: ECONNREFUSED" % b1_port in s.log()
    finally:
        b1.stop()
        b2.stop()
