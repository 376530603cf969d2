"""statsd: the metrics sent by UDP every flush interval (master only).

Theory of operation
-------------------
Every `flush_interval` the master gathers the workers' merged snapshot (the same as `sozuctl
metrics` and GET /metrics) and sends what changed since the last flush: counters as their
increase (`|c`), levels as gauges (`|g`), and request times as timings (`|ms`): each histogram
bucket that gained n requests is sent once as its upper bound with a sample rate of 1/n, which
a statsd server counts as n timings of that value.

Names carry the `prefix`. With `tagged_metrics`, labels are DogStatsD tags
(`sozu.http.requests:3|c|#application:web,status_class:2xx`); without, they are parts of the
name (`sozu.http.requests.web.2xx:3|c`, dots and colons inside a label replaced by `_`).

Sending never waits: the socket is non-blocking UDP, a datagram that cannot leave (no route, a
full buffer, a refused port) is dropped and counted, and the failure is logged once until
sending works again. Nothing here runs in a worker, so no statsd address, right or wrong, can
slow the traffic.
"""
from __future__ import annotations

import logging
import socket

from sozu.address import sockaddr
from sozu.metrics import BUCKETS_MS, NO_APPLICATION, STATUS_CLASSES

log = logging.getLogger("sozu.statsd")

MAX_DATAGRAM = 1432  # bytes: fits an Ethernet MTU with IP and UDP headers
GAUGES = ("active_connections", "idle_backend_connections")
SKIPPED = {"applications", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", *GAUGES}


class StatsdSender:
    def __init__(self, address: str, prefix: str, tagged: bool, interval: float, collect):
        self.family, self.target = sockaddr(address)
        self.prefix, self.tagged, self.interval = prefix, tagged, interval
        self.collect = collect  # collect(on_done): on_done((total, master figures))
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.next_at = 0.0
        self.waiting = False
        self.previous: dict[str, float] = {}
        self.dropped = 0
        self.failing = False

    def close(self) -> None:
        self.sock.close()

    def tick(self, now: float) -> None:
        if now >= self.next_at and not self.waiting:
            self.next_at = now + self.interval
            self.waiting = True
            self.collect(self.flush)

    def flush(self, figures) -> None:
        self.waiting = False
        self.send(self.lines(*figures))

    # -- what is sent --------------------------------------------------------------------------
    def lines(self, total: dict, master: dict) -> list[str]:
        out: list[str] = []
        for name, value in sorted(total.items()):
            if name not in SKIPPED and isinstance(value, int):
                self._count(out, name, {}, value)
        for name in GAUGES:
            out.append(self._line(name, {}, total.get(name, 0), "g"))
        for app_id, app in sorted((total.get("applications") or {}).items()):
            application = "" if app_id == NO_APPLICATION else app_id
            for backend, counts in sorted((app.get("backends") or {}).items()):
                labels = {"application": application, "backend": "" if backend == "-" else backend}
                for status_class in STATUS_CLASSES:
                    self._count(out, "http.requests", {**labels, "status_class": status_class[7:]},
                                counts.get(status_class, 0))
                self._count(out, "http.bytes_in", labels, counts.get("bytes_in", 0))
                self._count(out, "http.bytes_out", labels, counts.get("bytes_out", 0))
                if backend != "-":
                    self._count(out, "backend.connect_errors", labels, counts.get("connect_errors", 0))
            for kind in ("request", "backend"):
                self._timings(out, f"http.{kind}_time", {"application": application},
                              app.get(f"{kind}_time_buckets") or [])
        for row in master.get("backends", ()):
            up = row["up"] if row["checked"] else True
            out.append(self._line("backend.up", {"application": row["app_id"], "backend": row["address"]},
                                  1 if up else 0, "g"))
        self._count(out, "worker_restarts", {}, master.get("worker_restarts", 0))
        self._count(out, "orders_applied", {}, master.get("orders_applied", 0))
        return out

    def _count(self, out: list, name: str, labels: dict, value: float) -> None:
        key = self._name(name, labels)
        increase = value - self.previous.get(key, 0)
        self.previous[key] = value
        if increase > 0:  # a restarted worker starts again from zero: nothing negative is sent
            out.append(self._line(name, labels, increase, "c"))

    def _timings(self, out: list, name: str, labels: dict, buckets: list) -> None:
        for index, count in enumerate(buckets):
            key = self._name(name, labels) + f"#{index}"
            increase = count - self.previous.get(key, 0)
            self.previous[key] = count
            if increase > 0:
                bound = BUCKETS_MS[min(index, len(BUCKETS_MS) - 1)]
                rate = "" if increase == 1 else f"|@{1 / increase:.6g}"
                out.append(self._line(name, labels, bound, "ms") + rate if not self.tagged
                           else self._line(name, labels, bound, "ms", rate))

    def _name(self, name: str, labels: dict) -> str:
        if self.tagged or not labels:
            return f"{self.prefix}.{name}"
        parts = [value.replace(".", "_").replace(":", "_") or "none" for value in labels.values()]
        return ".".join([self.prefix, name, *parts])

    def _line(self, name: str, labels: dict, value, kind: str, rate: str = "") -> str:
        text = f"{self._name(name, labels)}:{value:g}|{kind}{rate}"
        if self.tagged and labels:
            text += "|#" + ",".join(f"{key}:{value}" for key, value in labels.items())
        return text

    # -- sending -------------------------------------------------------------------------------
    def send(self, lines: list[str]) -> None:
        packet = b""
        for line in lines:
            data = line.encode()
            if packet and len(packet) + 1 + len(data) > MAX_DATAGRAM:
                self._send(packet)
                packet = b""
            packet = packet + b"\n" + data if packet else data
        if packet:
            self._send(packet)

    def _send(self, packet: bytes) -> None:
        try:
            self.sock.sendto(packet, self.target)
        except OSError as error:  # never waits, never raises: a statsd outage is not ours
            self.dropped += 1
            if not self.failing:
                self.failing = True
                log.warning("statsd: cannot send to %s:%s: %s (dropping metrics until it works)",
                            self.target[0], self.target[1], error.strerror or error)
            return
        if self.failing:
            self.failing = False
            log.info("statsd: sending again after %d dropped datagrams", self.dropped)
