"""sozu as a systemd service: conf/sozu.service passes `systemd-analyze verify`, and the master
speaks the notification protocol that its Type=notify relies on (sozu/systemd.py), heard here
on a datagram socket of the test's own, as systemd would hear it."""
from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from tests.integration.harness import ROOT, free_port, http_config, routed_to, wait_for
from tests.integration.load import alive, group_members

UNIT = ROOT / "conf" / "sozu.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze missing (Debian's systemd package; the Makefile installs it)")
def test_the_unit_file_verifies(tmp_path):
    """Verified with the repository in place of /opt/sozu, so that its commands exist. Any
    complaint fails, warnings included (systemd ignores a bad line and still exits 0)."""
    unit = tmp_path / "sozu.service"
    unit.write_text(UNIT.read_text().replace("/opt/sozu", str(ROOT)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stdout + done.stderr
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    broken = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "notifyy" in broken.stderr, "the check above can fail"


def test_the_unit_file_drives_sozu_as_the_design_says():
    lines = dict(line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line and not line.startswith("#"))
    assert lines["Type"] == "notify" and lines["NotifyAccess"] == "all"
    assert lines["ExecReload"].endswith(" upgrade") and "sozuctl" in lines["ExecReload"]
    assert lines["KillSignal"] == "SIGTERM" and lines["KillMode"] == "mixed"   # soft stop, by the master
    assert lines["Restart"] == "on-failure"


class Notifications:
    """A NOTIFY_SOCKET: what the processes of the service send, one datagram at a time."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def next(self, timeout: float = 15.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def pending(self) -> bytes | None:
        """A datagram already sent, or None."""
        self.sock.setblocking(False)
        try:
            return self.sock.recv(4096)
        except BlockingIOError:
            return None

    def close(self) -> None:
        self.sock.close()


def test_ready_on_start_mainpid_on_upgrade_stopping_on_stop(tmp_path, sozu, backend):
    b = backend("b1")
    port = free_port()
    heard = Notifications(tmp_path / "notify")
    try:
        s = sozu(http_config(tmp_path, port, [b.port], extra=f'pid_file_path = "{tmp_path}/sozu.pid"'),
                 wait=False, env={"NOTIFY_SOCKET": heard.path})
        assert heard.next() == {"READY": "1"}
        # READY comes once every worker serves: a request succeeds at once.
        assert routed_to(port, "localhost")[0] == 200
        first = s.process.pid
        assert s.ctl("upgrade").returncode == 0
        told = heard.next()
        new = int(told["MAINPID"])
        assert told["READY"] == "1" and new != first and alive(new)
        assert int((tmp_path / "sozu.pid").read_text()) == new
        # The old master goes only after that, and silently: from any process of the service,
        # systemd would take STOPPING=1 for a stop of the whole service.
        assert s.process.wait(15) == 0
        assert heard.pending() is None
        assert routed_to(port, "localhost")[0] == 200
        assert s.ctl("shutdown").returncode == 0
        assert heard.next() == {"STOPPING": "1"}
        wait_for(lambda: not group_members(first), 15, what="every process to exit")
    finally:
        heard.close()
