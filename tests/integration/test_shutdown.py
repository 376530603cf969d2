"""Shutdown: soft (`sozuctl shutdown`, SIGTERM) finishes what is in
flight within the grace period; hard (`--hard`, SIGINT) is immediate; `--worker N` stops one
worker for good; the last generation removes the socket and pid files."""
from __future__ import annotations

import http.client
import signal
import socket
import threading
import time

import pytest

from tests.integration.harness import free_port, http_config, wait_for
from tests.integration.load import alive, group_members
from tests.integration.test_upgrade import _answers, get


def _start(tmp_path, sozu, backend, grace: int = 5, worker_count: int = 2):
    b = backend("b1")
    port = free_port()
    extra = f'pid_file_path = "{tmp_path}/sozu.pid"'
    text = http_config(tmp_path, port, [b.port], worker_count=worker_count, extra=extra)
    s = sozu(text.replace("shutdown_grace_period = 5", f"shutdown_grace_period = {grace}"))
    s.port, s.backend = port, b
    return s


class InFlight(threading.Thread):
    """One request in flight, its outcome kept."""

    def __init__(self, s, path: str):
        super().__init__(daemon=True)
        self.port, self.path = s.port, path
        self.status = self.connection = self.error = None
        self.start()
        wait_for(lambda: s.backend.active == 1, 10, what="the request to be in flight at the backend")

    def run(self):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            conn.request("GET", self.path, headers={"Host": "localhost"})
            response = conn.getresponse()
            response.read()
            self.status, self.connection = response.status, response.getheader("Connection")
        except (OSError, http.client.HTTPException) as error:
            self.error = error


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _everything_gone(s) -> None:
    wait_for(lambda: not group_members(s.process.pid), 10, what="every sozu process to exit")


@pytest.mark.parametrize("how", ["sozuctl", "SIGTERM"])
def test_soft_shutdown_finishes_in_flight_requests_and_refuses_new_ones(tmp_path, sozu, backend, how):
    s = _start(tmp_path, sozu, backend)
    slow = InFlight(s, "/slow/1.5")
    started = time.monotonic()
    if how == "sozuctl":
        out = s.ctl("shutdown")
        assert out.returncode == 0, out.stdout + out.stderr
    else:
        s.signal(signal.SIGTERM)
    wait_for(lambda: _refused(s.port), 1, what="new connections refused")  # not queued until the end
    assert s.wait_exit(10) == 0
    elapsed = time.monotonic() - started
    slow.join(5)
    assert (slow.status, slow.connection) == (200, "close"), slow.error
    assert 1.0 < elapsed < 4.5, elapsed  # waited for the request (1.5 s), not the grace period (5 s)
    _everything_gone(s)
    assert not (tmp_path / "sozu.sock").exists() and not (tmp_path / "sozu.pid").exists()


def test_soft_shutdown_is_bounded_by_the_grace_period(tmp_path, sozu, backend):
    s = _start(tmp_path, sozu, backend, grace=1)
    slow = InFlight(s, "/slow/8")
    started = time.monotonic()
    assert s.ctl("shutdown").returncode == 0
    assert s.wait_exit(10) == 0
    assert time.monotonic() - started < 5  # the grace period (1 s), not the request (8 s)
    slow.join(5)
    assert slow.status is None and slow.error is not None  # closed when the grace period ended
    _everything_gone(s)


@pytest.mark.parametrize("how", ["sozuctl", "SIGINT"])
def test_hard_shutdown_is_immediate(tmp_path, sozu, backend, how):
    s = _start(tmp_path, sozu, backend)
    slow = InFlight(s, "/slow/8")
    started = time.monotonic()
    if how == "sozuctl":
        out = s.ctl("shutdown", "--hard")
        assert out.returncode == 0, out.stdout + out.stderr
    else:
        s.signal(signal.SIGINT)
    s.wait_exit(10)
    assert time.monotonic() - started < 4  # neither the grace period (5 s) nor the request (8 s)
    slow.join(5)
    assert slow.status is None and slow.error is not None
    _everything_gone(s)
    assert not (tmp_path / "sozu.sock").exists() and not (tmp_path / "sozu.pid").exists()


def test_shutdown_of_one_worker_is_not_respawned(tmp_path, sozu, backend):
    s = _start(tmp_path, sozu, backend)
    workers = {w["id"]: w["pid"] for w in s.workers()}
    out = s.ctl("shutdown", "--worker", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(lambda: not alive(workers[1]), 5, what="worker 1 to exit")
    time.sleep(1.5)  # longer than a respawn takes
    assert [(w["id"], w["pid"], w["state"]) for w in s.workers()] == [(0, workers[0], "running")]
    assert "worker 1" not in s.log().split("exited: exit code 0")[-1]  # nothing started since
    for _ in range(20):
        assert get(s.port)[0] == 200
    assert s.ctl("shutdown", "--worker", "1").returncode == 1  # no such worker any more
    assert s.ctl("shutdown").returncode == 0
    assert s.wait_exit(10) == 0


def test_a_shutdown_during_an_upgrade_wins(tmp_path, sozu, backend):
    """Both requests reach the old master in one turn of its loop: the upgrade is failed (its new
    master killed) rather than left to find the files of a stopped proxy removed."""
    s = _start(tmp_path, sozu, backend)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(s.socket_path)
        sock.sendall(b'{"id":"u","version":0,"type":"UPGRADE_MASTER"}\0'
                     b'{"id":"s","version":0,"type":"PROXY","data":{"type":"SOFT_STOP","data":null}}\0')
        answers = _answers(sock, {"u", "s"})
    assert answers["s"]["status"] == "OK"
    assert answers["u"]["status"] == "ERROR" and "stop of the proxy was asked" in answers["u"]["message"]
    assert s.wait_exit(10) == 0
    _everything_gone(s)  # the new master too
    assert not (tmp_path / "sozu.sock").exists() and not (tmp_path / "sozu.pid").exists()
