"""Zero-downtime upgrade: the master re-executes itself and hands everything over (master only).

Theory of operation
-------------------
The old master starts the new one with `posix_spawn(sys.executable, original argv)`, so whatever
code is on disk now is what runs. The new master inherits, by file descriptor:

  SOZU_LISTENER_FDS      `address=fd;...`: every listening socket, never re-bound, so the kernel
                         keeps queueing connections in the same backlogs throughout;
  SOZU_COMMAND_FD        the command socket (the socket file stays where it is);
  SOZU_METRICS_FD        `address=fd`: the Prometheus endpoint's socket (sozu.metrics_server);
  SOZU_UPGRADE_STATE_FD  a memfd holding the running state as saved-state orders, so every change
                         made at runtime survives (the TOML file is read only for the settings);
  SOZU_UPGRADE_READY_FD  a pipe on which the new master writes "ready" once all its workers serve;
  SOZU_GENERATION        the new master's generation number.

Until "ready" arrives the old generation serves as before, and refuses state changes (they would
be lost: the new master already has its copy); the new master does not serve the command socket
yet, and writes the pid file only once it is ready. When "ready" arrives, the old master stops
accepting on the command socket, tells its workers to drain (stop accepting, finish in-flight
requests, close idle keep-alive connections) and exits when they are done, leaving the socket and
pid files to the new master. If the new master exits or is not ready before the deadline, it is
killed and the old generation simply goes on: the upgrade answers ERROR with the reason.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time

from sozu.command_socket import ENV_COMMAND_FD
from sozu.listeners import ENV_FDS
from sozu.messages import dump_orders
from sozu.metrics_server import ENV_METRICS_FD

log = logging.getLogger("sozu.upgrade")

ENV_STATE_FD = "SOZU_UPGRADE_STATE_FD"
ENV_READY_FD = "SOZU_UPGRADE_READY_FD"
ENV_GENERATION = "SOZU_GENERATION"
HANDOVER_VARIABLES = (ENV_FDS, ENV_STATE_FD, ENV_READY_FD, ENV_COMMAND_FD, ENV_GENERATION,
                      ENV_METRICS_FD)
READY_DEADLINE = 30.0  # s: a new master that is not serving by then has failed
PIPE_CLOSED_GRACE = 2.0  # s: how long to wait for its exit status once its ready pipe closed


class Upgrade:
    """An upgrade in progress, as the old master sees it. It is given what it hands over: the
    state, the environment that names the inherited sockets (the listeners', sozu.listeners;
    the Prometheus endpoint's, sozu.metrics_server), the command socket and the new
    generation's number."""

    def __init__(self, state, sockets_env: dict[str, str], command_sock, generation: int,
                 unregister, on_done):
        self.state = state
        self.sockets_env = sockets_env
        self.command_sock = command_sock
        self.generation = generation  # the new master's
        self.unregister = unregister  # unregister(fd) from the master's selector
        self.on_done = on_done  # on_done(error: str | None, new_pid: int)
        self.pid: int | None = None
        self.ready_fd: int | None = None
        self.buffer = b""
        self.deadline = time.monotonic() + READY_DEADLINE
        self.finished = False
        self.pipe_closed = False

    def start(self) -> None:
        state_fd = os.memfd_create("sozu-state", 0)  # not MFD_CLOEXEC: the new master reads it
        os.write(state_fd, dump_orders(self.state.to_orders()))
        os.lseek(state_fd, 0, os.SEEK_SET)
        ready_r, ready_w = os.pipe()
        os.set_inheritable(ready_w, True)
        command_sock = self.command_sock
        env = {k: v for k, v in os.environ.items() if k not in HANDOVER_VARIABLES}
        env.update({
            ENV_COMMAND_FD: str(command_sock.fileno()),
            ENV_STATE_FD: str(state_fd),
            ENV_READY_FD: str(ready_w),
            ENV_GENERATION: str(self.generation),
        }, **self.sockets_env)
        command_sock.set_inheritable(True)
        argv = [sys.executable] + sys.orig_argv[1:]
        try:
            self.pid = os.posix_spawn(sys.executable, argv, env)
        finally:
            os.close(state_fd)
            os.close(ready_w)
        os.set_blocking(ready_r, False)
        self.ready_fd = ready_r
        log.info("upgrade: started the new master, pid %d (generation %d)", self.pid, self.generation)

    def on_readable(self) -> None:
        try:
            data = os.read(self.ready_fd, 64)
        except BlockingIOError:
            return
        if data:
            self.buffer += data
            if b"ready" in self.buffer:
                self.finish(None)
            return
        # The new master is gone, or about to be: its exit status (child_exited) is the better
        # reason to report; wait a little for it.
        self.close()
        self.pipe_closed = True
        self.deadline = min(self.deadline, time.monotonic() + PIPE_CLOSED_GRACE)

    def check(self, now: float) -> None:
        if not self.finished and now > self.deadline:
            if self.pipe_closed:
                self.fail("the new master closed its ready pipe without being ready")
            else:
                self.fail(f"the new master was not ready within {READY_DEADLINE:.0f}s")

    def child_exited(self, pid: int, how: str) -> bool:
        if pid != self.pid:
            return False
        if not self.finished:
            self.fail(f"the new master exited before being ready ({how})")
        return True

    def fail(self, reason: str) -> None:
        if self.finished:
            return
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                log.debug("new master %d already gone", self.pid)
        log.error("upgrade failed: %s; the current generation keeps serving", reason)
        self.finish(reason)

    def finish(self, error: str | None) -> None:
        self.finished = True
        self.close()
        self.on_done(error, self.pid)

    def close(self) -> None:
        if self.ready_fd is not None:
            self.unregister(self.ready_fd)
            os.close(self.ready_fd)
            self.ready_fd = None


def take_handover(environ=os.environ):
    """In a new master: the state bytes, the ready fd and the generation handed over, if any.
    The variables are removed so that they do not leak into a later upgrade or the workers."""
    state_fd = environ.pop(ENV_STATE_FD, None)
    ready_fd = environ.pop(ENV_READY_FD, None)
    generation = int(environ.pop(ENV_GENERATION, "0") or 0)
    state_bytes = None
    if state_fd is not None:
        fd = int(state_fd)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(fd)
        state_bytes = b"".join(chunks)
    return state_bytes, (int(ready_fd) if ready_fd is not None else None), generation


def signal_ready(ready_fd: int) -> None:
    try:
        os.write(ready_fd, b"ready\n")
    except OSError as error:
        log.warning("could not tell the previous master we are ready: %s", error)
    finally:
        os.close(ready_fd)
