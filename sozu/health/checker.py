"""The active health checker: checks every backend of the applications that have a health check,
once per interval, from the master's selectors loop (master only; no gevent, no threads).

Theory of operation
-------------------
The master holds one HealthChecker and calls `tick(state, now)` every turn of its loop; tick
returns how long the loop may sleep before the checker has something to do. Each checked backend
is a Target with its own schedule (a heap of next check times, spread over the interval so 500
backends are not checked in one burst) and its rise/fall state (sozu.health.verdict).

A check is a Probe: a non-blocking connect registered in the master's selector, then (HTTP) the
request written and the answer read as the socket becomes ready. Nothing in a probe blocks: a
backend that accepts and never answers costs one socket until the probe's deadline (the check's
timeout), found in a second heap. A probe ends with a Verdict; when it changes the backend's
state, the reason is logged once and `publish` gets a SET_BACKEND_HEALTH order, which the master
applies to its state and sends to every worker, so all of them take the backend out of (or put
it back into) balancing together.

The targets follow the state at most every SYNC_INTERVAL: a check turned on, changed or off, a
backend added or removed. A removed target's probe is closed at once.
"""
from __future__ import annotations

import errno
import heapq
import itertools
import logging
import selectors
import socket
import struct
import time
import zlib

from sozu.health.verdict import OK, BackendHealth, HttpAnswer, Verdict, request
from sozu.messages import Order

log = logging.getLogger("sozu.health")

SYNC_INTERVAL = 0.1   # s: how soon a state change reaches the checker
MAX_SLEEP = 0.25      # s: the longest tick() lets the master's loop sleep
CONNECTING, WRITING, READING = "connecting", "writing", "reading"  # a probe's phases
_LINGER_RESET = struct.pack("ii", 1, 0)
SPREAD_SLOTS = 50     # start times of the checks within an interval
_NOT_YET = (errno.EAGAIN, errno.ENOTCONN, errno.EINPROGRESS)  # a connect still under way


class Target:
    """One checked backend."""

    __slots__ = ("key", "check", "health", "probe", "next_at", "checks")

    def __init__(self, key: tuple[str, str, str], check: dict, now: float):
        self.key = key
        self.check = check
        self.health = BackendHealth()
        self.probe: Probe | None = None
        # Spread over the interval by a hash of the key, in SPREAD_SLOTS slots: 500 backends do
        # not start their checks in the same turn of the loop, nor wake it 500 times a second.
        spread = (zlib.crc32(repr(key).encode()) % SPREAD_SLOTS) / SPREAD_SLOTS
        self.next_at = now + spread * check["interval"]
        self.checks = 0

    def view(self) -> dict:
        app_id, backend_id, address = self.key
        return {"app_id": app_id, "backend_id": backend_id, "address": address,
                "up": self.health.up, "successes": self.health.successes,
                "failures": self.health.failures, "last_error": self.health.last_error,
                "checks": self.checks}


class Probe:
    """One check in flight: connect, then (HTTP) write the request and read the answer."""

    __slots__ = ("target", "sock", "deadline", "phase", "outbox", "answer", "done")

    def __init__(self, target: Target, deadline: float):
        self.target = target
        self.deadline = deadline
        self.sock: socket.socket | None = None
        self.phase = CONNECTING
        self.outbox = b""
        self.answer = HttpAnswer(target.check) if target.check["protocol"] == "http" else None
        self.done = False


class HealthChecker:
    def __init__(self, selector: selectors.BaseSelector, publish):
        self.selector = selector
        self.publish = publish  # publish(order): the master applies it and tells every worker
        self.targets: dict[tuple[str, str, str], Target] = {}
        self._schedule: list = []   # (next_at, seq, target)
        self._deadlines: list = []  # (deadline, seq, probe)
        self._seq = itertools.count()
        self._synced_at = float("-inf")

    # -- the master's loop ---------------------------------------------------------------------
    def tick(self, state, now: float) -> float:
        """Follow the state, expire late probes, start the checks that are due; the seconds the
        loop may sleep before calling again."""
        if now - self._synced_at >= SYNC_INTERVAL:
            self._synced_at = now
            self.sync(state, now)
        deadlines, schedule = self._deadlines, self._schedule
        while deadlines and deadlines[0][0] <= now:
            probe = heapq.heappop(deadlines)[2]
            if not probe.done:
                self._end(probe, Verdict(False, f"no answer within {probe.target.check['timeout']:g} s"))
        while schedule and schedule[0][0] <= now:
            _, _, target = heapq.heappop(schedule)
            if self.targets.get(target.key) is not target:
                continue  # removed, or replaced by a new check
            interval = target.check["interval"]
            target.next_at += interval
            if target.next_at <= now:  # the loop was late: the next one a whole interval away
                target.next_at = now + interval
            heapq.heappush(schedule, (target.next_at, next(self._seq), target))
            if target.probe is None:
                self._start(target, now)
        wake = now + MAX_SLEEP
        if deadlines:
            wake = min(wake, deadlines[0][0])
        if schedule:
            wake = min(wake, schedule[0][0])
        return max(0.0, min(wake - now, MAX_SLEEP))

    def sync(self, state, now: float) -> None:
        wanted: dict[tuple[str, str, str], dict] = {}
        for app_id, check in state.health_checks.items():
            for backend in state.backends.get(app_id, ()):
                wanted[(app_id, backend["backend_id"], backend["address"])] = check
        for key, target in list(self.targets.items()):
            if wanted.get(key) is not target.check:
                del self.targets[key]
                if target.probe is not None:
                    self._close(target.probe)
        for key, check in wanted.items():
            if key not in self.targets:
                target = Target(key, check, now)
                verdict = state.health.get(key)
                if verdict is not None:  # a changed check keeps the backend's state
                    target.health.up = verdict["up"]
                self.targets[key] = target
                heapq.heappush(self._schedule, (target.next_at, next(self._seq), target))

    def views(self) -> list[dict]:
        return [target.view() for _, target in sorted(self.targets.items())]

    def close_in_child(self) -> None:
        """A forked worker's copies of the probes' sockets go, the master's stay. Closed
        without unregistering: the child shares the master's epoll instance, and unregistering
        there is unregistering in the master."""
        for target in self.targets.values():
            if target.probe is not None and target.probe.sock is not None:
                target.probe.sock.close()

    # -- probes --------------------------------------------------------------------------------
    def _start(self, target: Target, now: float) -> None:
        probe = Probe(target, now + target.check["timeout"])
        target.probe = probe
        target.checks += 1
        host, _, port = target.key[2].rpartition(":")
        family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
        try:
            probe.sock = socket.socket(family, socket.SOCK_STREAM)
            probe.sock.setblocking(False)
            # Closed with a reset, as HAProxy closes its checks: 500 checks a second would
            # otherwise leave 30,000 connections in TIME_WAIT, and exhaust the local ports.
            probe.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            code = probe.sock.connect_ex((host.strip("[]"), int(port)))
        except OSError as error:  # out of descriptors, for one
            self._end(probe, Verdict(False, f"cannot connect: {error.strerror or error}"))
            return
        if code not in (0, errno.EINPROGRESS):
            self._end(probe, Verdict(False, f"connect failed: {errno.errorcode.get(code, code)}"))
            return
        verdict = self._go_on(probe)  # a loopback or LAN connect is often done already
        if verdict is not None:
            self._end(probe, verdict)
            return
        heapq.heappush(self._deadlines, (probe.deadline, next(self._seq), probe))
        event = selectors.EVENT_READ if probe.phase == READING else selectors.EVENT_WRITE
        self.selector.register(probe.sock, event, lambda mask: self._on_ready(probe))

    def _go_on(self, probe: Probe) -> Verdict | None:
        """Right after connect_ex: a TCP check whose connect is done passes; an HTTP check's
        request is sent at once when the connection takes it. Either saves a turn of the loop;
        otherwise the probe waits for the socket to be writable."""
        try:
            if probe.answer is None:
                probe.sock.getpeername()
                return OK
            data = request(probe.target.check, probe.target.key[2])
            sent = probe.sock.send(data)
        except OSError as error:
            if error.errno in _NOT_YET:
                return None
            return Verdict(False, f"connect failed: {errno.errorcode.get(error.errno, error)}")
        probe.outbox = data[sent:]
        probe.phase = WRITING if probe.outbox else READING
        return None

    def _on_ready(self, probe: Probe) -> None:
        """The checker's edge: whatever a backend does, the probe ends with a verdict."""
        try:
            verdict = self._step(probe)
        except OSError as error:
            verdict = Verdict(False, f"{error.strerror or error}")
        if verdict is not None:
            self._end(probe, verdict)

    def _step(self, probe: Probe) -> Verdict | None:
        sock = probe.sock
        if probe.phase == CONNECTING:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                return Verdict(False, f"connect failed: {errno.errorcode.get(code, code)}")
            if probe.answer is None:
                return OK  # a TCP check: the connect is the check
            probe.outbox = request(probe.target.check, probe.target.key[2])
            probe.phase = WRITING
        if probe.phase == WRITING:
            try:
                sent = sock.send(probe.outbox)
            except BlockingIOError:
                return None
            probe.outbox = probe.outbox[sent:]
            if not probe.outbox:
                probe.phase = READING
                self.selector.modify(sock, selectors.EVENT_READ, lambda mask: self._on_ready(probe))
            return None
        try:
            piece = sock.recv(16384)
        except BlockingIOError:
            return None
        return probe.answer.feed(piece) if piece else probe.answer.finish()

    def _end(self, probe: Probe, verdict: Verdict) -> None:
        self._close(probe)
        target = probe.target
        if self.targets.get(target.key) is not target:
            return
        check = target.check
        if target.health.record(verdict, check["rise"], check["fall"]):
            app_id, backend_id, address = target.key
            if target.health.up:
                log.info("backend %s (%s) of %s is up: %d checks passed", backend_id, address,
                         app_id, check["rise"])
            else:
                log.warning("backend %s (%s) of %s is down: %s (%d checks failed)", backend_id,
                            address, app_id, verdict.reason, check["fall"])
            self.publish(Order("SET_BACKEND_HEALTH", {
                "app_id": app_id, "backend_id": backend_id, "address": address,
                "up": target.health.up, "since": time.time(),
                "reason": None if target.health.up else verdict.reason}))

    def _close(self, probe: Probe) -> None:
        probe.done = True
        if probe.target.probe is probe:
            probe.target.probe = None
        if probe.sock is not None:
            try:
                self.selector.unregister(probe.sock)
            except (KeyError, ValueError):
                pass  # never registered: the connect failed at once
            probe.sock.close()
            probe.sock = None

