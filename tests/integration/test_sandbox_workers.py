"""The sandbox of real workers, read from the outside in /proc. Needs root, as CI
has: a user switch and a chroot are only applied when sozu starts as root."""
from __future__ import annotations

import json
import os
import pwd

import pytest

from sozu import sandbox
from tests.integration.harness import free_port, http_config
from tests.integration.test_upgrade import get, master_pid, upgrade

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox is applied only as root (CI runs as root)")


def _nobody() -> tuple[int, int]:
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


def _groups(pid: int) -> str:
    with open(f"/proc/{pid}/status") as file:
        return next(line.split(":", 1)[1].strip() for line in file if line.startswith("Groups:"))


def assert_sandboxed(pid: int, root: str) -> None:
    uid, gid = _nobody()
    info = sandbox.describe(pid)
    assert info["uid"] == (uid,) * 4, info   # real, effective, saved, filesystem
    assert info["gid"] == (gid,) * 4, info
    assert _groups(pid) == ""                 # root's supplementary groups dropped
    assert info["no_new_privs"] == 1
    assert (info["cap_eff"], info["cap_prm"], info["cap_inh"], info["cap_amb"]) == (0, 0, 0, 0), info
    assert info["cap_bnd"] == 0, info
    if info["root"] is not None or _can_ptrace():  # a non-dumpable process's root is
        assert info["root"] == root, info          # readable only with CAP_SYS_PTRACE


def _can_ptrace() -> bool:
    CAP_SYS_PTRACE = 19
    with open("/proc/self/status") as file:
        eff = next(int(line.split()[1], 16) for line in file if line.startswith("CapEff:"))
    return bool(eff >> CAP_SYS_PTRACE & 1)


def _config(tmp_path, port, backends, chroot: str | None = None) -> str:
    extra = 'user = "nobody"\ngroup = "%s"\n' % _group_name()
    if chroot:
        extra += f'chroot = "{chroot}"\n'
    return http_config(tmp_path, port, backends, extra=extra)


def _group_name() -> str:
    import grp
    try:
        return grp.getgrnam("nogroup").gr_name
    except KeyError:
        return grp.getgrgid(_nobody()[1]).gr_name


def test_workers_run_as_nobody_without_privileges(tmp_path, sozu, backend):
    b = backend("b1")
    port = free_port()
    s = sozu(_config(tmp_path, port, [b.port]))
    workers = s.workers()
    assert len(workers) == 2
    for worker in workers:
        assert_sandboxed(worker["pid"], "/")
    master = sandbox.describe(master_pid(s))
    assert master["uid"][1] == 0  # the master keeps root: it binds, forks and re-executes
    assert get(port)[0] == 200


def test_chrooted_workers_proxy_and_follow_runtime_changes_and_upgrades(tmp_path, sozu, backend):
    jail = tmp_path / "jail"
    jail.mkdir(mode=0o755)  # empty: no /etc, no /proc, no resolver, hence numeric addresses
    b1, b2 = backend("b1"), backend("b2")
    port = free_port()
    s = sozu(_config(tmp_path, port, [b1.port], chroot=str(jail)))
    for worker in s.workers():
        assert_sandboxed(worker["pid"], str(jail))
        assert os.readlink(f"/proc/{worker['pid']}/cwd") in (str(jail), "/")
    status, body, _ = get(port)
    assert status == 200 and json.loads(body)["backend"] == "b1"
    # A backend changed at runtime is reached from inside the chroot.
    answer = s.order("ADD_BACKEND", {"app_id": "app", "backend_id": "second", "address": f"127.0.0.1:{b2.port}",
                                     "sticky_id": None, "load_balancing_parameters": {"weight": 100},
                                     "backup": False})
    assert answer["status"] == "OK", answer
    answer = s.order("REMOVE_BACKEND", {"app_id": "app", "backend_id": "app-0", "address": f"127.0.0.1:{b1.port}"})
    assert answer["status"] == "OK", answer
    assert {json.loads(get(port)[1])["backend"] for _ in range(8)} == {"b2"}
    # After an upgrade, the new generation's workers are in the same sandbox, with that state.
    upgrade(s, master_pid(s))
    for worker in s.workers():
        assert_sandboxed(worker["pid"], str(jail))
    assert {json.loads(get(port)[1])["backend"] for _ in range(8)} == {"b2"}
