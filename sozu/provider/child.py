"""The master's side of a provider: one child process it starts, watches and starts again.

The provider is a client of the command socket like sozuctl (sozu/provider/etcd.py); the
master only keeps it alive: started once the master serves its command socket, started again
when it dies (after 1 s, doubling up to 30 s while it keeps dying within a minute of its start),
stopped with the master. Nothing is lost or applied twice across a restart: a provider starts by
having the proxy load the whole state etcd describes, which applies only the difference.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

log = logging.getLogger("sozu.master")

FIRST_DELAY, MAX_DELAY, STABLE_AFTER = 1.0, 30.0, 60.0
MASTER_PID_VARIABLE = "SOZU_PROVIDER_MASTER_PID"  # the provider stops when this pid is gone


class ProviderChild:
    def __init__(self, config_path: str, kind: str = "etcd"):
        # This very code, wherever the current directory is: -P keeps it out of sys.path.
        self.argv = [sys.executable, "-P", "-m", "sozu.cli", "provider", kind, "-c", config_path]
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        self.kind = kind
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.delay = FIRST_DELAY
        self.not_before = 0.0
        self.stopped = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def tick(self, now: float) -> None:
        """Start the provider when it is not running and its delay is over."""
        if self.process is None and not self.stopped and now >= self.not_before:
            try:
                self.process = subprocess.Popen(
                    self.argv, env={**self.env, MASTER_PID_VARIABLE: str(os.getpid())},
                    close_fds=True)
            except OSError as error:
                log.error("cannot start the %s provider: %s", self.kind, error)
                self.not_before = now + self.delay
                return
            self.started = now
            log.info("%s provider started (pid %d)", self.kind, self.process.pid)

    def exited(self, pid: int, status: int) -> bool:
        """The master reaped `pid`: was it the provider? Then schedule its next start."""
        if self.process is None or pid != self.process.pid:
            return False
        self.process.returncode = os.waitstatus_to_exitcode(status)  # reaped by the master
        self.process = None
        if self.stopped:
            return True
        now = time.monotonic()
        self.delay = FIRST_DELAY if now - self.started > STABLE_AFTER else min(self.delay * 2, MAX_DELAY)
        self.not_before = now + self.delay
        code = os.waitstatus_to_exitcode(status)
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        log.error("%s provider (pid %d) died: %s; starting it again in %.0f s", self.kind, pid,
                  how, self.delay)
        return True

    def stop(self) -> None:
        self.stopped = True
        if self.process is not None:
            try:
                self.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                log.debug("provider %d already gone", self.process.pid)
