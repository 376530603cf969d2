"""Supervision: the master replaces dead and stuck workers, with the current state,
and backs off from a worker that cannot boot; `sozuctl status` shows states and restarts."""
from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest

from tests.integration.harness import free_port, http_config, wait_for
from tests.integration.load import Load, LoadClient, alive
from tests.integration.test_upgrade import get, runtime_changes


def running_pids(s) -> dict:
    return {w["id"]: w["pid"] for w in s.workers() if w["state"] == "running"}


def test_a_killed_worker_is_replaced_within_a_second_with_the_current_state(tmp_path, sozu, backend):
    b1, b2 = backend("b1"), backend("b2")
    port = free_port()
    s = sozu(http_config(tmp_path, port, [b1.port], worker_count=1))
    s.port = port
    runtime_changes(s, b2.port)  # made after the worker started
    (old,) = s.workers()
    os.kill(old["pid"], signal.SIGKILL)
    killed = time.monotonic()
    new = wait_for(lambda: [w for w in s.workers() if w["state"] == "running" and w["pid"] != old["pid"]],
                   3, interval=0.01, what="a new worker 0")
    assert time.monotonic() - killed < 1.0
    assert new[0]["id"] == 0 and new[0]["restarts"] == 1
    status, body, _ = get(port, host="two.example")  # the only worker is the new one
    assert status == 200 and json.loads(body)["backend"] == "b2"
    hashes = s.order("QUERY", {"type": "APPLICATIONS_HASHES"})
    assert hashes["status"] == "OK"
    assert hashes["data"]["workers"]["0"] == hashes["data"]["master"]
    assert "worker 0 (pid %d) died: signal SIGKILL" % old["pid"] in s.log()
    out = s.ctl("status")
    assert out.returncode == 0
    row = next(line.split() for line in out.stdout.splitlines() if line.split()[:1] == ["0"])
    assert row[1:4] == [str(new[0]["pid"]), "running", "1"], out.stdout


def test_a_stuck_worker_is_killed_after_its_heartbeat_timeout_and_replaced(tmp_path, sozu, backend):
    b = backend("b1")
    port = free_port()
    s = sozu(http_config(tmp_path, port, [b.port], worker_count=2, extra="worker_heartbeat_timeout = 1"))
    before = running_pids(s)
    with Load(LoadClient(port, name="keep-alive"), LoadClient(port, keep_alive=False, name="new-connection")) as load:
        time.sleep(0.3)
        os.kill(before[0], signal.SIGSTOP)
        stopped = time.monotonic()
        wait_for(lambda: not alive(before[0]), 5, what="the stuck worker to be killed")
        killed_after = time.monotonic() - stopped
        after = wait_for(lambda: (p := running_pids(s)).get(0) not in (None, before[0]) and p, 3,
                         what="a new worker 0")
        time.sleep(0.3)
    assert 0.5 <= killed_after < 2.5, killed_after  # 1 s after the last answer to a ping
    assert after[1] == before[1]  # the other worker was left alone
    assert "missed its heartbeat" in s.log()
    # Connections on the frozen worker die with it; connections to the other one do not.
    assert load.ok > 20, load.summary()


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root (CI runs as root)")
def test_a_worker_that_cannot_boot_is_backed_off_with_the_reason_logged(tmp_path, sozu, backend):
    """A real cause: the chroot directory disappears while sozu runs. Workers already inside it
    go on serving; a replacement cannot enter it and exits at boot, again and again: the master
    spaces its attempts out (never a tight loop), logs why, and recovers when the directory is
    back."""
    jail = tmp_path / "jail"
    jail.mkdir(mode=0o755)
    b = backend("b1")
    port = free_port()
    s = sozu(http_config(tmp_path, port, [b.port], worker_count=2, extra=f'chroot = "{jail}"'))
    before = running_pids(s)
    shutil.rmtree(jail)
    os.kill(before[0], signal.SIGKILL)
    time.sleep(4.0)
    log = s.log()
    starts = log.count("worker 0 started")  # the first start, then the attempts since the kill
    assert 3 <= starts <= 6, starts  # about 0, 0.1, 1, 2(+1) seconds: backing off
    assert "cannot apply the sandbox: chroot" in log and "No such file or directory" in log
    assert "worker 0: its sandbox could not be applied" in log and "next start in" in log
    rows = {w["id"]: w for w in s.workers()}
    assert rows[0]["state"] in ("restarting", "booting") and rows[0]["restarts"] >= 2
    assert rows[1]["pid"] == before[1] and rows[1]["state"] == "running"
    assert get(port)[0] == 200  # worker 1 serves meanwhile
    jail.mkdir(mode=0o755)
    s.wait_ready(workers=2, timeout=12)
    assert running_pids(s)[0] not in (None, before[0])


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root (CI runs as root)")
def test_a_worker_upgrade_whose_new_worker_cannot_boot_leaves_the_old_one_serving(tmp_path, sozu, backend):
    jail = tmp_path / "jail"
    jail.mkdir(mode=0o755)
    b = backend("b1")
    port = free_port()
    s = sozu(http_config(tmp_path, port, [b.port], worker_count=1, extra=f'chroot = "{jail}"'))
    (old,) = s.workers()
    shutil.rmtree(jail)
    out = s.ctl("--timeout=40000", "upgrade", "--worker", "0")
    assert out.returncode == 1
    assert "the new worker exited before serving (exit code 3)" in out.stdout + out.stderr, out
    assert [(w["pid"], w["state"]) for w in s.workers()] == [(old["pid"], "running")]
    assert get(port)[0] == 200
