"""Worker system call filter: a seccomp allow-list installed through libseccomp (pyseccomp).

Theory of operation
-------------------
A worker parses what any client sends; if a bug ever let a request run code in it, the
unprivileged user, the chroot and no_new_privs (sozu.sandbox) still leave it every system call
of the kernel. The filter narrows that to what a serving worker does: read, write, accept,
connect, poll, allocate memory, tell the time. ``execve``, ``ptrace``, ``fork``/``clone``,
``mount``, ``bpf``, setuid, opening a file for writing, a netlink or raw socket: none is on the
list, so none reaches the kernel.

* ``check()`` runs in the master before any fork: the kernel must have seccomp filters
  (PR_GET_SECCOMP answers) and libseccomp must load. It returns the reason when either is
  missing; the caller decides between a warning (seccomp on by default) and a start-up error
  (asked for explicitly in the configuration).
* ``prepare(action)`` runs in the worker before the sandbox: libseccomp is a shared object, and
  after the chroot and the uid switch it may no longer be readable; building the filter in
  memory needs no file.
* ``install(prepared)`` runs last, after sozu.sandbox.apply() and before the worker accepts
  anything: the privileged steps of the sandbox (chroot, setresuid, capset) are done, so they
  need not be allowed. The worker has one thread (the sandbox checks it), and a filter applies
  to the thread that loads it and to every thread created later.

The action for a call off the list is the configuration's ``sandbox.seccomp_action``:

* ``kill`` (the default): the kernel kills the whole worker with SIGSYS, before the call does
  anything. The master sees the signal in the exit status, logs a sandbox violation (see
  ``violation()``) and forks a replacement. Nothing half-done survives the violation.
* ``eperm``: the call fails with EPERM and the worker goes on. Python raises PermissionError,
  which the edge that made the call reports (a connection ends, an order answers ERROR).
* ``log``: the call is allowed and the kernel logs it (audit type 1326, in ``dmesg``). For
  finding what a new libc, OpenSSL or kernel needs, never for production.

The list was measured: every worker of the integration tests (HTTP, HTTPS with SNI and hot
certificate changes, TCP, WebSocket upgrades, listeners added through the command socket,
upgrades, PROXY protocol, connection limits) was run under ``strace -f`` and, with
``seccomp_action = "log"``, the whole test suite was run with the kernel log watched for calls
off the list. Calls the measurement did not see but that a path of the worker can make (a
fallback of the vDSO clock, libc's abort(), a poll from a socket timeout) are listed with the
reason. Calls with arguments worth narrowing are allowed only with those arguments.
"""
from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass

ACTIONS = ("kill", "eperm", "log")

# (why, system calls): allowed whatever their arguments.
ALLOWED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("memory: the Python allocator, malloc arenas, OpenSSL buffers; libffi maps one executable "
     "page for pyOpenSSL's callbacks",
     ("brk", "mmap", "munmap", "mremap", "mprotect", "madvise")),
    ("the event loop: libev's epoll backend; poll/select for a socket timeout outside gevent; "
     "libev wakes its loop from signal handlers through an eventfd or a pipe",
     ("epoll_wait", "epoll_pwait", "epoll_ctl", "epoll_create1", "poll", "ppoll", "select",
      "pselect6", "eventfd2", "pipe2")),
    ("byte I/O on sockets, the channel and the log file",
     ("read", "readv", "write", "writev")),
    ("sockets: accepting clients, connecting to backends, relaying; listening sockets arrive "
     "over the channel as SCM_RIGHTS (recvmsg); gathered sends (sendmsg)",
     ("accept", "accept4", "connect", "recvfrom", "sendto", "recvmsg", "sendmsg", "shutdown",
      "getsockopt", "setsockopt", "getsockname", "getpeername")),
    ("file descriptors: close, dup (a StreamServer's copy of a listening socket), flags "
     "(F_GETFD, F_SETFL non-blocking), stat of an open file",
     ("close", "fcntl", "dup", "dup2", "dup3", "fstat", "newfstatat", "statx", "lseek")),
    ("time: clock_gettime and gettimeofday are vDSO calls, but fall back to the kernel when the "
     "clock source has no vDSO (some virtual machines); sleeps",
     ("clock_gettime", "clock_getres", "gettimeofday", "time", "nanosleep", "clock_nanosleep")),
    ("signals: gevent's SIGTERM/SIGINT/SIGQUIT handlers, the return from a handler, libc's "
     "blocking of signals around critical sections, Python's alternate stack",
     ("rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall")),
    ("the process itself: its ids (gevent and OpenSSL compare getpid() to detect a fork), "
     "randomness for TLS, locks (futex), exit",
     ("getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getresuid",
      "getresgid", "getrandom", "futex", "set_robust_list", "rseq", "sched_yield",
      "sched_getaffinity", "getrusage", "sysinfo", "uname", "exit", "exit_group")),
)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _conditional_rules(seccomp) -> list[tuple[str, tuple]]:
    """(system call, argument conditions): each allowed only with these arguments."""
    import socket  # constants only; imported here because sozu.config imports ACTIONS
    import termios
    arg, eq, masked = seccomp.Arg, seccomp.EQ, seccomp.MASKED_EQ
    pid = os.getpid()
    return [
        # Backends are reached by IP address; no unix, netlink, packet or raw socket.
        ("socket", (arg(0, eq, socket.AF_INET),)),
        ("socket", (arg(0, eq, socket.AF_INET6),)),
        # Reading only: libffi reads /proc/self/status once (outside a chroot); the worker
        # never writes, creates or truncates a file (its log file is opened before).
        ("openat", (arg(2, masked, _WRITE_FLAGS, 0),)),
        # setblocking() (FIONBIO), pending bytes (FIONREAD), isatty() (TCGETS); nothing else.
        *(("ioctl", (arg(1, eq, request),))
          for request in (termios.FIONBIO, termios.FIONREAD, termios.TCGETS)),
        # getrlimit() only: a NULL new limit.
        ("prlimit64", (arg(2, eq, 0),)),
        # libc's abort() and raise() signal the worker itself, nobody else.
        ("tgkill", (arg(0, eq, pid),)),
        ("kill", (arg(0, eq, pid),)),
    ]


class SeccompUnavailable(Exception):
    """The filter cannot be built or loaded here; the message says why, in one line."""


@dataclass
class PreparedFilter:
    action: str
    handle: object  # pyseccomp.SyscallFilter, built and not yet loaded


def check() -> str | None:
    """None when workers can load a filter here, else the reason (one line)."""
    try:
        import prctl
        prctl.get_seccomp()
    except OSError as error:
        return f"the kernel has no seccomp filters ({error.strerror})"
    try:
        import pyseccomp
        pyseccomp.get_api()
    except (ImportError, RuntimeError, OSError, NotImplementedError) as error:
        return f"libseccomp cannot be loaded ({error})"
    return None


def prepare(action: str) -> PreparedFilter:
    """Builds the filter in memory, before the sandbox hides libseccomp; SeccompUnavailable."""
    if action not in ACTIONS:
        raise ValueError(f"unknown seccomp action {action!r}")
    try:
        import pyseccomp
        default = {"kill": pyseccomp.KILL_PROCESS, "eperm": pyseccomp.ERRNO(errno.EPERM),
                   "log": pyseccomp.LOG}[action]
        handle = pyseccomp.SyscallFilter(default)
        for _why, names in ALLOWED:
            for name in names:
                _allow(pyseccomp, handle, name)
        for name, conditions in _conditional_rules(pyseccomp):
            _allow(pyseccomp, handle, name, *conditions)
    except (ImportError, RuntimeError, OSError) as error:
        raise SeccompUnavailable(f"cannot build the seccomp filter: {error}") from None
    return PreparedFilter(action, handle)


def _allow(pyseccomp, handle, name: str, *conditions) -> None:
    try:
        number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    except (ValueError, OSError):
        return  # not a system call of this architecture (select on arm64): nothing to allow
    if number < 0:
        return
    handle.add_rule(pyseccomp.ALLOW, number, *conditions)


def install(prepared: PreparedFilter) -> None:
    """Loads the filter into this process for good; SeccompUnavailable when the kernel refuses."""
    try:
        prepared.handle.load()
    except OSError as error:
        raise SeccompUnavailable(f"cannot load the seccomp filter: {error.strerror}") from None


def violation(status: int) -> bool:
    """A wait status that says the filter killed the process (action kill)."""
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


# --- test orders: forbidden calls made on purpose (messages.TEST_ORDERS) ----------------------

def forbidden_call(name: str) -> str:
    """Makes the forbidden call `name` (execve or ptrace). Under action kill, never returns;
    under eperm, returns what the kernel answered; without a filter, the call happens."""
    import ctypes
    if name == "execve":
        try:
            os.execv("/bin/true", ["true"])
        except OSError as error:
            return f"execve: {error.strerror}"
    if name == "ptrace":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        if libc.ptrace(0x4206, os.getppid(), None, None) < 0:  # PTRACE_SEIZE the master
            return f"ptrace: {os.strerror(ctypes.get_errno())}"
        return "ptrace: allowed"
    raise ValueError(f"unknown forbidden call {name!r}")
