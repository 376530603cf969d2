"""Worker sandbox: unprivileged user, optional chroot, no capabilities, no new privileges, and a
system call filter.

Theory of operation
-------------------
The sandbox is split in two halves because of where the information lives:

* ``plan()`` runs in the master, before fork. Turning "nobody"/"nogroup" into numbers needs
  /etc/passwd and /etc/group (and NSS modules), which a chroot hides, so names are resolved
  here, once, and a bad name or a missing chroot directory is a start-up error, not a worker
  boot loop. When the master is not root no user switch or chroot is possible, so the plan
  records ``uid = gid = chroot = None`` and only the part any process can do to itself remains.
  A user whose uid is 0 is refused: a worker running as root is not sandboxed.

* ``apply()`` runs in the worker right after fork, while it still has one thread: capabilities,
  the bounding set and no_new_privs are per thread (only uid/gid changes are propagated to all
  threads by glibc); threads created later inherit them. A second thread is refused, checked
  after warm() so that nothing warm() loads may have started one (its numeric getaddrinfo uses
  ``_socket`` directly: gevent's resolver would run it in a new thread). Each step is where it
  is for a reason:

  1. RLIMIT_CORE 0 (soft and hard) and PR_SET_DUMPABLE 0 come first: the worker's memory is a
     copy of the master's (private keys included). If anything below crashes, no core file is
     written, and no other process of the same uid can ptrace it or read /proc/<pid>/mem,
     /proc/<pid>/environ while we are half-way. Lowering the hard limit is irreversible.
  2. warm(): everything Python and the C library load lazily from files is loaded now, because
     after chroot those files are gone: codecs (``encodings.idna`` pulls in ``stringprep`` and
     the ``unicodedata`` shared object; socket code encodes host names with it), the time zone
     (glibc reads /etc/localtime once and keeps it unless TZ changes; never call
     ``time.tzset()`` after apply), strerror() message catalogs, numeric ``getaddrinfo``, and
     the OpenSSL configuration when ``ssl``/``OpenSSL`` are already imported, gevent's resolver
     module when gevent is (``create_connection`` needs it even for 127.0.0.1). Importing a new
     module after chroot fails, and so does it after the uid switch when the interpreter lives
     where the new user cannot read (a pyenv Python under /root), so the worker imports (and
     gevent-patches) everything it will need *before* apply(); ``warm(modules)`` imports extra
     module names.
  3. PR_SET_KEEPCAPS 0, so that the setuid below makes the kernel empty the permitted,
     effective and ambient sets.
  4. chroot(dir) then chdir("/"): chroot needs CAP_SYS_CHROOT, so it precedes the uid switch;
     the chdir is what actually moves us in (a cwd left outside the new root is the classic
     escape). Name resolution is impossible afterwards, hence numeric backend addresses.
  5. setgroups([]) then setresgid(g, g, g): both need CAP_SETGID, lost at setuid. Without
     setgroups the worker would keep root's supplementary groups.
  6. The capability bounding set is emptied *before* the uid switch, because PR_CAPBSET_DROP
     needs CAP_SETPCAP, which setuid takes away (dropping afterwards fails with EPERM). Every
     capability the running kernel knows is dropped (probed with PR_CAPBSET_READ until EINVAL);
     python-prctl only knows the capabilities of the headers it was built with.
  7. setresuid(u, u, u): real, effective and saved uid together, so no saved uid 0 remains to
     switch back to. Then we check getresuid/getresgid/getgroups and that setuid(0) now fails.
  8. capset() with empty effective, permitted and inheritable sets: setuid does not clear the
     inheritable set, and an unprivileged worker may have inherited capabilities (file
     capabilities on the interpreter, ambient capabilities). Ambient capabilities cannot
     outlive permitted/inheritable ones, so they go too.
  9. PR_SET_DUMPABLE 0 again: changing credentials resets "dumpable" to fs.suid_dumpable, which
     is 2 on some distributions.
  10. PR_SET_NO_NEW_PRIVS 1: execve() can no longer grant anything (setuid bits, file
      capabilities), which is also why an unprivileged worker, which cannot drop its bounding
      set (no CAP_SETPCAP), is still unable to gain a capability.
  11. Every property is read back from the kernel; any mismatch is a SandboxError.
  12. The seccomp filter (sozu.seccomp), when the plan has an action: built right after warm(),
      while libseccomp can still be read, and loaded last, so that none of the privileged
      calls above needs to be on its allow-list. Nothing may be imported or opened afterwards
      that the worker has not used before: the filter lets only the calls of a serving worker
      through.

Any failure raises SandboxError with a one-line message naming what failed. The process is
then in an unknown, partly sandboxed state: the caller (the worker) must report the message and
exit; it never serves.

``describe(pid)`` reads /proc/<pid>/status and /proc/<pid>/root, from the outside (the master,
``sozuctl status``, tests). Inside a chroot there is no /proc: a sandboxed worker cannot
describe itself, and must not keep a /proc file descriptor either (``..`` from /proc/<pid> leads
to other processes' roots).
"""

from __future__ import annotations

import _socket
import codecs
import ctypes
import errno
import grp
import importlib
import logging
import os
import pwd
import resource
import stat
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

import prctl

from sozu import seccomp

log = logging.getLogger(__name__)

CAP_SETPCAP = 8
_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_MAX_CAPS = 64  # the kernel's capability sets are 64 bits wide

_CODECS = ("idna", "ascii", "latin-1", "utf-8")


class SandboxError(Exception):
    """The sandbox cannot be planned or applied; the message is one line naming what failed."""


@dataclass(frozen=True)
class SandboxPlan:
    uid: int | None  # None: not started as root, no user switch and no chroot
    gid: int | None
    chroot: str | None  # absolute, symlinks resolved
    user: str
    group: str
    seccomp_action: str | None = None  # sozu.seccomp.ACTIONS; None: no system call filter


def plan(user: str, group: str, chroot: str | None,
         seccomp_action: str | None = None) -> SandboxPlan:
    """Resolves the sandbox in the master, before fork, while /etc is still reachable.

    ``user`` and ``group`` are names, or numeric ids that have no name. ``seccomp_action`` was
    checked by the caller (sozu.seccomp.check()).
    """
    root_dir = _check_chroot(chroot) if chroot else None
    if os.geteuid() != 0:
        if root_dir:
            log.warning("not started as root: chroot %s is not applied", root_dir)
        log.info("not started as root: workers keep uid %d (user %r not applied)",
                 os.geteuid(), user)
        return SandboxPlan(uid=None, gid=None, chroot=None, user=user, group=group,
                           seccomp_action=seccomp_action)
    uid = _lookup(user, "user", lambda n: pwd.getpwnam(n).pw_uid)
    gid = _lookup(group, "group", lambda n: grp.getgrnam(n).gr_gid)
    if uid == 0:
        raise SandboxError(f"user {user!r} has uid 0: workers must not run as root")
    if gid == 0:
        raise SandboxError(f"group {group!r} has gid 0: workers must not run as root's group")
    return SandboxPlan(uid=uid, gid=gid, chroot=root_dir, user=user, group=group,
                       seccomp_action=seccomp_action)


def apply(p: SandboxPlan) -> None:
    """Sandboxes the calling process for good; on SandboxError the caller must exit."""
    if (p.uid is None) != (p.gid is None):
        raise SandboxError("sandbox plan sets only one of uid and gid")
    if os.geteuid() == 0 and p.uid is None:
        raise SandboxError("running as root with a sandbox plan that switches no user")
    root_id = _stat_id(p.chroot) if p.chroot else None

    _step("setrlimit(RLIMIT_CORE, 0)", resource.setrlimit, resource.RLIMIT_CORE, (0, 0))
    _step("prctl(PR_SET_DUMPABLE, 0)", prctl.set_dumpable, 0)
    warm()
    _check_single_thread()
    syscall_filter = _step("seccomp filter", seccomp.prepare, p.seccomp_action) \
        if p.seccomp_action else None
    _step("prctl(PR_SET_KEEPCAPS, 0)", prctl.set_keepcaps, 0)
    if p.chroot:
        _step(f"chroot {p.chroot}", os.chroot, p.chroot)
        _step(f"chdir / in chroot {p.chroot}", os.chdir, "/")
    if p.uid is not None:
        _step("setgroups([])", os.setgroups, [])
        _step(f"setresgid({p.gid}) for group {p.group!r}", os.setresgid, p.gid, p.gid, p.gid)
    bounding_emptied = _empty_bounding_set(required=p.uid is not None)
    if p.uid is not None:
        _step(f"setresuid({p.uid}) for user {p.user!r}", os.setresuid, p.uid, p.uid, p.uid)
        _check_identity(p)
    _step("capset (no capabilities)", _capset_empty)
    _step("prctl(PR_SET_DUMPABLE, 0)", prctl.set_dumpable, 0)
    _step("prctl(PR_SET_NO_NEW_PRIVS, 1)", prctl.set_no_new_privs, 1)
    _verify(root_id, bounding_emptied)
    if syscall_filter is not None:
        _step("seccomp filter", seccomp.install, syscall_filter)
    log.debug("sandbox applied: uid=%s gid=%s chroot=%s seccomp=%s", p.uid, p.gid, p.chroot,
              p.seccomp_action)


def warm(modules: Iterable[str] = ()) -> None:
    """Loads now what Python and libc would otherwise load lazily from files (see step 2)."""
    for name in modules:
        _step(f"import {name}", importlib.import_module, name)
    for name in _CODECS:
        codecs.lookup(name)
    "xn--bcher-kva.example".encode("ascii").decode("idna")
    time.strftime("%Y-%m-%d %H:%M:%S %z %Z", time.localtime())
    for code in (errno.ENOENT, errno.EACCES, errno.ECONNREFUSED, errno.ETIMEDOUT):
        os.strerror(code)
    try:  # _socket: never gevent's, whose resolver would start a thread that keeps privileges
        _socket.getaddrinfo("127.0.0.1", 1, _socket.AF_UNSPEC, _socket.SOCK_STREAM)
    except OSError:
        pass  # only warming; a host without IPv4 loopback still gets its libc state loaded
    if "ssl" in sys.modules:  # OpenSSL reads its configuration on first context
        sys.modules["ssl"].SSLContext(sys.modules["ssl"].PROTOCOL_TLS_SERVER)
    if "OpenSSL.SSL" in sys.modules:  # cryptography may bundle its own OpenSSL
        openssl = sys.modules["OpenSSL.SSL"]
        openssl.Context(openssl.TLS_METHOD)
    if "gevent.hub" in sys.modules:  # the hub imports its resolver (and threadpool) on first
        sys.modules["gevent.hub"].get_hub().resolver  # use; this starts no thread


def describe(pid: int) -> dict:
    """Sandbox state of a process as the kernel reports it in /proc/<pid>.

    ``root`` is None when /proc/<pid>/root may not be read (a non-dumpable process, seen by a
    reader without CAP_SYS_PTRACE, e.g. in a default Docker container).
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            info = parse_status(f.read())
    except OSError as e:
        raise SandboxError(f"cannot read /proc/{pid}/status: {e.strerror}") from None
    try:
        info["root"] = os.readlink(f"/proc/{pid}/root")
    except PermissionError:
        info["root"] = None
    except OSError as e:
        raise SandboxError(f"cannot read /proc/{pid}/root: {e.strerror}") from None
    return info


def parse_status(text: str) -> dict:
    """The sandbox fields of a /proc/<pid>/status text (describe() without "root")."""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return {
            "uid": tuple(int(v) for v in fields["Uid"].split()),
            "gid": tuple(int(v) for v in fields["Gid"].split()),
            "no_new_privs": int(fields["NoNewPrivs"]),
            "cap_eff": int(fields["CapEff"], 16),
            "cap_prm": int(fields["CapPrm"], 16),
            "cap_inh": int(fields["CapInh"], 16),
            "cap_amb": int(fields.get("CapAmb", "0"), 16),
            "cap_bnd": int(fields["CapBnd"], 16),
            "seccomp": int(fields.get("Seccomp", "0")),  # 2: a filter is loaded
        }
    except (KeyError, ValueError) as e:
        raise SandboxError(f"unexpected /proc status format: {e}") from None


# --- planning helpers ----------------------------------------------------------------------

def _lookup(name: str, kind: str, by_name) -> int:
    try:
        return by_name(name)
    except KeyError:
        if name.isdigit():
            return int(name)
        raise SandboxError(f"unknown {kind} {name!r}") from None


def _check_chroot(path: str) -> str:
    resolved = os.path.realpath(path)
    try:
        st = os.stat(resolved)
    except OSError as e:
        raise SandboxError(f"chroot {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SandboxError(f"chroot {path}: {os.strerror(errno.ENOTDIR)}")
    if st.st_uid != 0 or st.st_mode & 0o022:
        log.warning("chroot %s is writable by others than root: workers could alter their root",
                    resolved)
    return resolved


# --- applying helpers ----------------------------------------------------------------------

def _step(what: str, fn, *args):
    try:
        return fn(*args)
    except OSError as e:
        reason = e.strerror or os.strerror(e.errno or 0) or str(e)
        raise SandboxError(f"{what}: {reason}") from None
    except (ImportError, ValueError, TypeError, seccomp.SeccompUnavailable) as e:
        raise SandboxError(f"{what}: {e}") from None


def _stat_id(path: str) -> tuple[int, int]:
    st = _step(f"chroot {path}", os.stat, path)
    return st.st_dev, st.st_ino


def _check_single_thread() -> None:
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        return  # no /proc (already chrooted?): the kernel checks below still hold per thread
    if threads > 1:
        raise SandboxError(f"process has {threads} threads: apply the sandbox right after fork")


def _empty_bounding_set(required: bool) -> bool:
    """Drops every capability of the kernel from the bounding set (needs CAP_SETPCAP).

    Returns False when it was left as is: not required and impossible (no CAP_SETPCAP).
    """
    if _capbset() == 0:
        return True
    if not required and not (_capget()[0] >> CAP_SETPCAP) & 1:
        # Unprivileged: the bounding set only limits what execve() may grant, and
        # no_new_privs makes execve() grant nothing; there is no way to empty it anyway.
        log.debug("no CAP_SETPCAP: capability bounding set left as is (no_new_privs covers it)")
        return False
    for cap in range(_MAX_CAPS):
        if _raw_prctl(_PR_CAPBSET_READ, cap) is None:
            break  # EINVAL: past the kernel's last capability
        if _raw_prctl(_PR_CAPBSET_DROP, cap) is None:
            err = ctypes.get_errno()
            raise SandboxError(
                f"cannot empty the capability bounding set (capability {cap}): "
                f"{os.strerror(err)}")
    return True


def _check_identity(p: SandboxPlan) -> None:
    if os.getresuid() != (p.uid,) * 3 or os.getresgid() != (p.gid,) * 3 or os.getgroups():
        raise SandboxError(
            f"credentials did not change: uids {os.getresuid()}, gids {os.getresgid()}, "
            f"groups {os.getgroups()}; wanted {p.user!r}/{p.group!r}")
    for regain in (os.setuid, os.seteuid, os.setgid):
        try:
            regain(0)
        except PermissionError:
            continue
        raise SandboxError(f"{regain.__name__}(0) still succeeds after switching to {p.user!r}")


def _verify(root_id: tuple[int, int] | None, bounding_emptied: bool) -> None:
    eff, prm, inh = _capget()
    problems = []
    if eff or prm or inh:
        problems.append(f"capabilities left (eff={eff:#x} prm={prm:#x} inh={inh:#x})")
    if bounding_emptied and _capbset():
        problems.append(f"capability bounding set not empty ({_capbset():#x})")
    if prctl.get_no_new_privs() != 1:
        problems.append("no_new_privs is not set")
    if prctl.get_dumpable() != 0:
        problems.append("process is still dumpable")
    if resource.getrlimit(resource.RLIMIT_CORE) != (0, 0):
        problems.append("core size limit is not 0")
    if root_id is not None:
        st = os.stat("/")
        if (st.st_dev, st.st_ino) != root_id:
            problems.append("/ is not the chroot directory")
    if problems:
        raise SandboxError("sandbox not in force: " + "; ".join(problems))


# --- capabilities through libc (python-prctl only knows the capabilities it was built with) ---

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _raw_prctl(option: int, arg: int) -> int | None:
    """prctl(option, arg); None on failure (errno in ctypes.get_errno())."""
    ctypes.set_errno(0)
    r = _libc.prctl(option, arg, 0, 0, 0)
    return None if r < 0 else r


def _capbset() -> int:
    mask = 0
    for cap in range(_MAX_CAPS):
        r = _raw_prctl(_PR_CAPBSET_READ, cap)
        if r is None:
            break
        mask |= (1 if r else 0) << cap
    return mask


def _capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of this thread, all 64 bits."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"capget: {os.strerror(err)}")
    return tuple(getattr(data[0], f) | getattr(data[1], f) << 32
                 for f in ("effective", "permitted", "inheritable"))


def _capset_empty() -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # zeroed: no capability in any set
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
