"""Sandbox tests on real forked processes: the child applies the sandbox and reports what it
observes through a pipe, then waits while the parent reads /proc/<child> from the outside."""

import errno
import grp
import json
import os
import pwd
import resource
import select
import signal
import socket
import tempfile
import time
from dataclasses import dataclass

import prctl
import pytest

from sozu import sandbox, seccomp

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="switching user/group and chroot need root (CI runs tests as root)")

CHILD_DEADLINE = 5.0
JANUARY = 1_704_110_400  # 2024-01-01 12:00 UTC: winter time wherever there is one
PARIS = "/usr/share/zoneinfo/Europe/Paris"


def _nobody() -> tuple[str, str, int, int]:
    """nobody and its group: nogroup on Debian, nobody elsewhere."""
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user on this system")
    try:
        gr = grp.getgrnam("nogroup")
    except KeyError:
        gr = grp.getgrgid(pw.pw_gid)
    return pw.pw_name, gr.gr_name, pw.pw_uid, gr.gr_gid


# --- running a child ------------------------------------------------------------------------

@dataclass
class Child:
    report: dict  # what the child saw of itself, or {"error": ...}
    outside: dict  # what the parent read in /proc/<pid> while the child waited
    exit_code: int


def run_child(body) -> Child:
    deadline = time.monotonic() + CHILD_DEADLINE
    result_r, result_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(result_r)
            os.close(go_w)
            try:
                report, code = body(), 0
            except BaseException as e:  # report everything, including SandboxError
                report = {"error": f"{type(e).__name__}: {e}"}
            data = json.dumps(report).encode() + b"\n"  # a line: gevent defers os.close
            while data:
                data = data[os.write(result_w, data):]
            os.read(go_r, 1)  # wait for the parent to look at us; EOF when it is done
        finally:
            os._exit(code)
    os.close(result_w)
    os.close(go_r)
    try:
        report = json.loads(_read_line(result_r, deadline))
        outside = _outside_view(pid)
    finally:
        os.close(go_w)
        os.close(result_r)
        exit_code = _reap(pid, deadline)
    return Child(report, outside, exit_code)


def _read_line(fd: int, deadline: float) -> bytes:
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError("child did not report in time")
        chunk = os.read(fd, 65536)
        chunks.append(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return b"".join(chunks)


def _reap(pid: int, deadline: float) -> int:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"child {pid} did not exit within {CHILD_DEADLINE} s")
        time.sleep(0.005)


def _outside_view(pid: int) -> dict:
    view = {"describe": sandbox.describe(pid),
            # a non-dumpable process's /proc files belong to root, whatever its uid
            "proc_owner": os.stat(f"/proc/{pid}/status").st_uid,
            "threads": {}}
    for tid in os.listdir(f"/proc/{pid}/task"):  # capabilities and no_new_privs are per thread
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            view["threads"][tid] = sandbox.parse_status(f.read())
    with open(f"/proc/{pid}/limits") as f:
        core = next(line for line in f if line.startswith("Max core file size"))
    view["core_limit"] = core.split()[4:6]
    return view


def _can_read_foreign_roots() -> bool:
    """/proc/<pid>/root of a non-dumpable process needs CAP_SYS_PTRACE (Docker drops it)."""
    return bool(sandbox.describe(os.getpid())["cap_eff"] >> 19 & 1)


# --- what the child observes ----------------------------------------------------------------

def _observe(status_fd: int | None, port: int) -> dict:
    """The sandboxed child's own view; status_fd was opened before a chroot hid /proc."""
    try:
        self_described = sandbox.describe(os.getpid())
    except sandbox.SandboxError as e:
        self_described = {"error": str(e)}
    root = os.stat("/")
    return {
        "resuid": os.getresuid(), "resgid": os.getresgid(), "groups": os.getgroups(),
        "describe_self": self_described,
        "status_fd": (sandbox.parse_status(os.pread(status_fd, 65536, 0).decode())
                      if status_fd is not None else None),
        "dumpable": prctl.get_dumpable(), "no_new_privs": prctl.get_no_new_privs(),
        "core": resource.getrlimit(resource.RLIMIT_CORE),
        "root_id": [root.st_dev, root.st_ino], "cwd": os.getcwd(),
        "open_etc_passwd": _outcome(lambda: open("/etc/passwd").close()),
        "connect_numeric": _outcome(lambda: _connect(port)),
        "resolve_localhost": _outcome(lambda: socket.getaddrinfo("localhost", port)),
        "setuid_0": _outcome(lambda: os.setuid(0)),
        "idna": "bücher.example".encode("idna").decode(),
        "tz": time.strftime("%z %Z", time.localtime(JANUARY)),
    }


def _outcome(fn) -> str:
    try:
        fn()
    except Exception as e:
        return type(e).__name__
    return "ok"


def _connect(port: int) -> None:
    with socket.socket() as s:
        s.settimeout(2)
        s.connect(("127.0.0.1", port))


def _set_paris_time_zone() -> str | None:
    """A real zone file, as the master would have loaded at start; None if tzdata is missing."""
    if not os.path.exists(PARIS):
        return None
    os.environ["TZ"] = PARIS
    time.tzset()
    return time.strftime("%z %Z", time.localtime(JANUARY))


@pytest.fixture
def listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


@pytest.fixture
def empty_root():
    """In /tmp itself: pytest's tmp_path sits under a 0700 directory that nobody cannot stat."""
    root = tempfile.mkdtemp(prefix="sozu-chroot-")
    os.chmod(root, 0o755)
    yield os.path.realpath(root)
    if os.path.isdir(root):
        os.rmdir(root)


def _assert_sandboxed(described: dict, uid: int, gid: int) -> None:
    assert described["uid"] == (uid,) * 4
    assert described["gid"] == (gid,) * 4
    assert described["no_new_privs"] == 1
    assert (described["cap_eff"], described["cap_prm"], described["cap_inh"],
            described["cap_amb"], described["cap_bnd"]) == (0, 0, 0, 0, 0)


# --- cases ----------------------------------------------------------------------------------

@needs_root
def test_root_with_chroot_becomes_nobody_in_an_empty_root(listener, empty_root):
    user, group, uid, gid = _nobody()

    def body():
        tz_before = _set_paris_time_zone()
        status_fd = os.open("/proc/self/status", os.O_RDONLY)  # test only: /proc is gone after
        sandbox.apply(sandbox.plan(user, group, empty_root))
        return {**_observe(status_fd, listener), "tz_before": tz_before}

    child = run_child(body)
    seen, outside = child.report, child.outside
    assert "error" not in seen, seen["error"]
    assert child.exit_code == 0

    # from the outside, while the child is alive
    _assert_sandboxed(outside["describe"], uid, gid)
    if _can_read_foreign_roots():
        assert outside["describe"]["root"] == empty_root
    else:
        assert outside["describe"]["root"] is None
    assert outside["proc_owner"] == 0  # not dumpable
    assert outside["core_limit"] == ["0", "0"]

    # from the inside
    _assert_sandboxed(_tuples(seen["status_fd"]), uid, gid)
    assert seen["resuid"] == [uid] * 3 and seen["resgid"] == [gid] * 3 and seen["groups"] == []
    assert seen["dumpable"] == 0 and seen["no_new_privs"] == 1 and seen["core"] == [0, 0]
    st = os.stat(empty_root)
    assert seen["root_id"] == [st.st_dev, st.st_ino] and seen["cwd"] == "/"
    assert seen["describe_self"]["error"].startswith("cannot read /proc/")
    assert seen["open_etc_passwd"] == "FileNotFoundError"
    assert seen["connect_numeric"] == "ok"
    assert seen["setuid_0"] == "PermissionError"
    assert seen["idna"] == "xn--bcher-kva.example"
    if seen["tz_before"] is not None:
        assert seen["tz"] == seen["tz_before"] == "+0100 CET"


@needs_root
def test_root_without_chroot_becomes_nobody(listener):
    user, group, uid, gid = _nobody()

    def body():
        sandbox.apply(sandbox.plan(user, group, None))
        return _observe(None, listener)

    child = run_child(body)
    seen, outside = child.report, child.outside
    assert "error" not in seen, seen["error"]
    _assert_sandboxed(outside["describe"], uid, gid)
    assert outside["describe"]["root"] in ("/", None)
    assert outside["proc_owner"] == 0
    assert outside["core_limit"] == ["0", "0"]
    _assert_sandboxed(_tuples(seen["describe_self"]), uid, gid)
    assert seen["describe_self"]["root"] == "/"
    assert seen["dumpable"] == 0 and seen["core"] == [0, 0] and seen["groups"] == []
    assert seen["open_etc_passwd"] == "ok"
    assert seen["connect_numeric"] == "ok"
    assert seen["setuid_0"] == "PermissionError"


def test_not_root_still_gets_no_new_privs_no_capabilities_not_dumpable(listener, empty_root):
    user, group, uid, gid = _nobody()

    def body():
        if os.geteuid() == 0:  # become an ordinary user first, as a non-root master would be
            sandbox.warm()  # while root: this Python may live where nobody cannot read
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        p = sandbox.plan(user, group, empty_root)  # chroot, like user, needs root: not planned
        sandbox.apply(p)
        return {**_observe(None, listener), "plan": [p.uid, p.gid, p.chroot]}

    child = run_child(body)
    seen, described = child.report, child.outside["describe"]
    assert "error" not in seen, seen["error"]
    assert seen["plan"] == [None, None, None]
    assert described["no_new_privs"] == 1
    assert (described["cap_eff"], described["cap_prm"], described["cap_inh"],
            described["cap_amb"]) == (0, 0, 0, 0)
    assert child.outside["core_limit"] == ["0", "0"]
    assert seen["dumpable"] == 0 and seen["no_new_privs"] == 1
    assert seen["describe_self"]["cap_eff"] == 0
    assert seen["connect_numeric"] == "ok"


@needs_root
def test_gevent_worker_reaches_a_numeric_backend_from_an_empty_chroot(listener, empty_root):
    """The worker's order: import and patch gevent, then apply; gevent sockets still connect."""
    user, group, uid, gid = _nobody()

    def body():
        import gevent.monkey
        gevent.monkey.patch_all()
        sandbox.apply(sandbox.plan(user, group, empty_root))
        import gevent
        conn = socket.create_connection(("127.0.0.1", listener), timeout=2)  # gevent's, patched
        conn.close()
        gevent.get_hub().threadpool.spawn(lambda: None).get()  # a thread born sandboxed
        try:
            import xml.dom.minidom  # noqa: F401  # never imported before: gone with the old root
            late_import = "ok"
        except ImportError as e:
            late_import = type(e).__name__
        return {"patched": gevent.monkey.is_module_patched("socket"), "late_import": late_import}

    child = run_child(body)
    assert "error" not in child.report, child.report["error"]
    assert child.report == {"patched": True, "late_import": "ModuleNotFoundError"}
    assert len(child.outside["threads"]) == 2  # main + the threadpool's, started after apply
    for described in child.outside["threads"].values():
        _assert_sandboxed(described, uid, gid)


@needs_root
def test_unknown_user_or_group_is_refused_at_plan():
    user, group, _, _ = _nobody()
    with pytest.raises(sandbox.SandboxError, match=r"^unknown user 'nobdy'$"):
        sandbox.plan("nobdy", group, None)
    with pytest.raises(sandbox.SandboxError, match=r"^unknown group 'nogrp'$"):
        sandbox.plan(user, "nogrp", None)


@needs_root
def test_root_user_or_group_is_refused_at_plan():
    user, group, _, _ = _nobody()
    with pytest.raises(sandbox.SandboxError,
                       match=r"^user 'root' has uid 0: workers must not run as root$"):
        sandbox.plan("root", group, None)
    with pytest.raises(sandbox.SandboxError, match=r"^group '0' has gid 0"):
        sandbox.plan(user, "0", None)


@needs_root
def test_numeric_ids_without_a_name_are_accepted():
    assert sandbox.plan("4242", "4243", None) == sandbox.SandboxPlan(
        uid=4242, gid=4243, chroot=None, user="4242", group="4243")


def test_missing_or_non_directory_chroot_is_refused_at_plan(tmp_path):
    user, group, _, _ = _nobody()
    missing = tmp_path / "nope"
    with pytest.raises(sandbox.SandboxError,
                       match=rf"^chroot {missing}: No such file or directory$"):
        sandbox.plan(user, group, str(missing))
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(sandbox.SandboxError, match=rf"^chroot {a_file}: Not a directory$"):
        sandbox.plan(user, group, str(a_file))


@needs_root
def test_chroot_gone_after_plan_fails_apply_clearly(empty_root):
    user, group, _, _ = _nobody()
    p = sandbox.plan(user, group, empty_root)
    os.rmdir(empty_root)
    child = run_child(lambda: sandbox.apply(p))
    assert child.report["error"] == (
        f"SandboxError: chroot {empty_root}: No such file or directory")
    assert child.exit_code == 1


@needs_root
def test_root_with_a_plan_that_switches_nobody_is_refused():
    p = sandbox.SandboxPlan(uid=None, gid=None, chroot=None, user="nobody", group="nogroup")
    child = run_child(lambda: sandbox.apply(p))
    assert child.report["error"] == (
        "SandboxError: running as root with a sandbox plan that switches no user")
    assert child.outside["describe"]["uid"] == (0, 0, 0, 0)  # refused before any change


def test_describe_reads_this_process():
    me = sandbox.describe(os.getpid())
    assert me["uid"][0] == os.getuid() and me["gid"][0] == os.getgid()
    assert me["root"] == "/"
    with pytest.raises(sandbox.SandboxError, match="cannot read /proc/"):
        sandbox.describe(2**22 + 1)  # above pid_max's ceiling


def _tuples(d: dict) -> dict:
    """JSON turned tuples into lists."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


# --- the system call filter (sozu.seccomp) --------------------------------------------------

needs_seccomp = pytest.mark.skipif(seccomp.check() is not None, reason=f"seccomp: {seccomp.check()}")


def _errno_of(fn) -> str:
    try:
        fn()
    except OSError as e:
        return errno.errorcode[e.errno]
    return "ok"


@needs_root
@needs_seccomp
def test_with_action_eperm_calls_off_the_list_fail_and_serving_calls_work(listener, empty_root):
    user, group, _, _ = _nobody()

    def body():
        sandbox.apply(sandbox.plan(user, group, empty_root, seccomp_action="eperm"))
        return {
            "execve": _errno_of(lambda: os.execv("/bin/true", ["true"])),
            "fork": _errno_of(os.fork),
            # Without the filter, nobody in a root-owned 0755 root gets EACCES, not EPERM.
            "create": _errno_of(lambda: os.open("/x", os.O_WRONLY | os.O_CREAT, 0o600)),
            "unix_socket": _errno_of(lambda: socket.socket(socket.AF_UNIX).close()),
            "read_only_open": _errno_of(lambda: os.open("/missing", os.O_RDONLY)),
            "connect_numeric": _outcome(lambda: _connect(listener)),
        }

    child = run_child(body)
    assert child.exit_code == 0, child.report
    assert child.outside["describe"]["seccomp"] == 2
    assert child.report == {"execve": "EPERM", "fork": "EPERM", "create": "EPERM",
                            "unix_socket": "EPERM", "read_only_open": "ENOENT",
                            "connect_numeric": "ok"}


@needs_seccomp
def test_with_action_kill_a_call_off_the_list_kills_with_sigsys():
    pid = os.fork()
    if pid == 0:
        try:
            filter_ = seccomp.prepare("kill")
            prctl.set_no_new_privs(1)
            seccomp.install(filter_)
            os.execv("/bin/true", ["true"])
        finally:
            os._exit(7)  # not reached: the kernel kills the process at execve
    deadline = time.monotonic() + CHILD_DEADLINE
    while not (done := os.waitpid(pid, os.WNOHANG))[0]:
        assert time.monotonic() < deadline, "the child neither exec'ed nor died"
        time.sleep(0.005)
    assert seccomp.violation(done[1]), os.waitstatus_to_exitcode(done[1])
    assert not seccomp.violation(0)


def test_an_unknown_action_is_refused():
    with pytest.raises(ValueError):
        seccomp.prepare("trap")
