"""Per-worker counters and time histograms, per application and backend (pure).

Counters are plain integers: one increment per event, no locks (a worker is one thread). Each
finished request adds to one row of counters, the row of its (application, backend) pair, and
to its application's histograms; the worker-wide totals are sums of the rows, made only when a
snapshot is taken, so a request costs no more than it did before there were labels.

Times go into fixed logarithmic buckets (with their sum, as Prometheus histograms have), so
percentiles cost nothing per request and a worker's memory stays flat however long it runs:
the request time (from its first byte to the end of its answer) and the backend time (from the
backend connection being ready to the head of its answer). The master sums workers' snapshots
(`aggregate`).

METRICS DISABLE stops the counting (each call below returns at once) until METRICS ENABLE; the
counts so far are kept, and snapshots go on answering with them and with the gauges of now.
"""
from __future__ import annotations

import bisect

# Upper bounds of the buckets, in milliseconds; the last bucket is open-ended.
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)
PERCENTILES = (50, 90, 99, 99.9)
# Always in a snapshot, zero or not, so that an operator sees them before the first request.
CORE_COUNTERS = ("requests", "status_1xx", "status_2xx", "status_3xx", "status_4xx", "status_5xx",
                 "bytes_in", "bytes_out", "backend_connect_errors", "accepted_connections")

# Index: status // 100 (0 when no status was sent)
STATUS_CLASSES = ("status_none", "status_1xx", "status_2xx", "status_3xx", "status_4xx", "status_5xx")
# One row of counters per (application, backend): requests, one count per status class, bytes.
ROW = ("requests", *STATUS_CLASSES, "bytes_in", "bytes_out")
_BYTES_IN, _BYTES_OUT = ROW.index("bytes_in"), ROW.index("bytes_out")
NO_APPLICATION = "-"  # what a request that reached no application is counted under


class _Times:
    __slots__ = ("request", "request_sum", "backend", "backend_sum")

    def __init__(self):
        self.request = [0] * (len(BUCKETS_MS) + 1)
        self.request_sum = 0.0
        self.backend = [0] * (len(BUCKETS_MS) + 1)
        self.backend_sum = 0.0


class Metrics:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.clear()

    def clear(self) -> None:
        self.counters: dict[str, int] = dict.fromkeys(CORE_COUNTERS, 0)
        self.rows: dict[tuple[str, str], list[int]] = {}
        self.times: dict[str, _Times] = {}
        self.connect_errors: dict[tuple[str, str], int] = {}  # (application, backend address)
        self.retries: dict[str, int] = {}                     # application -> next backend tried

    def incr(self, name: str, value: int = 1) -> None:
        if not self.enabled:
            return
        self.counters[name] = self.counters.get(name, 0) + value

    def record(self, exchange) -> None:
        """One finished request: its status class, bytes and times."""
        if not self.enabled:
            return
        app_id = exchange.app_id
        key = (app_id, exchange.backend)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = [0] * len(ROW)
        row[0] += 1
        status = exchange.status
        row[status // 100 + 1 if 100 <= status < 600 else 1] += 1
        row[_BYTES_IN] += exchange.bytes_in
        row[_BYTES_OUT] += exchange.bytes_out
        times = self.times.get(app_id)
        if times is None:
            times = self.times[app_id] = _Times()
        duration = exchange.duration_ms()
        times.request[bisect.bisect_left(BUCKETS_MS, duration)] += 1
        times.request_sum += duration
        if exchange.first_byte:
            waited = (exchange.first_byte - exchange.connected) * 1000
            times.backend[bisect.bisect_left(BUCKETS_MS, waited)] += 1
            times.backend_sum += waited

    def connect_error(self, app_id: str, address: str, retried: bool) -> None:
        """A backend connect failed; `retried` when another backend is tried next."""
        if not self.enabled:
            return
        self.counters["backend_connect_errors"] += 1
        key = (app_id, address)
        self.connect_errors[key] = self.connect_errors.get(key, 0) + 1
        if retried:
            self.retries[app_id] = self.retries.get(app_id, 0) + 1

    def snapshot(self, gauges: dict[str, int] | None = None) -> dict:
        data = dict(self.counters)
        applications: dict[str, dict] = {}
        for (app_id, backend), row in self.rows.items():
            for name, count in zip(ROW, row):
                if count or name in CORE_COUNTERS:
                    data[name] = data.get(name, 0) + count
            backends = _application(applications, app_id)["backends"]
            backends[backend] = {name: count for name, count in zip(ROW, row) if count}
        for (app_id, backend), count in self.connect_errors.items():
            _application(applications, app_id)["backends"].setdefault(backend, {})["connect_errors"] = count
        for app_id, count in self.retries.items():
            _application(applications, app_id)["retries"] = count
        buckets = [0] * (len(BUCKETS_MS) + 1)
        for app_id, times in self.times.items():
            buckets = [a + b for a, b in zip(buckets, times.request)]
            _application(applications, app_id).update(
                request_time_buckets=list(times.request), request_time_sum_ms=times.request_sum,
                backend_time_buckets=list(times.backend), backend_time_sum_ms=times.backend_sum)
        if gauges:
            data.update(gauges)
        data["request_time_buckets"] = buckets
        data["applications"] = applications
        return data


def _application(applications: dict, app_id: str) -> dict:
    found = applications.get(app_id)
    if found is None:
        found = applications[app_id] = {"backends": {}}
    return found


def percentiles(buckets: list[int]) -> dict[str, float | None]:
    """Bucket upper bounds at each percentile (an upper estimate, like Prometheus histograms).
    A percentile in the open-ended last bucket is given as that bucket's lower bound (the
    largest finite bound): JSON has no infinity, and the answer must stay encodable."""
    total = sum(buckets)
    result: dict[str, float | None] = {}
    for p in PERCENTILES:
        if not total:
            result[f"p{p:g}_ms"] = None
            continue
        rank = total * p / 100
        seen = 0
        for index, n in enumerate(buckets):
            seen += n
            if seen >= rank:
                result[f"p{p:g}_ms"] = float(BUCKETS_MS[min(index, len(BUCKETS_MS) - 1)])
                break
    return result


def merge(total: dict, snapshot: dict) -> dict:
    """Add a snapshot into `total`: numbers add up, lists (histograms) bucket by bucket, and
    tables (applications, backends) key by key."""
    for name, value in snapshot.items():
        mine = total.get(name)
        if isinstance(value, dict):
            total[name] = merge(mine if isinstance(mine, dict) else {}, value)
        elif isinstance(value, list):
            total[name] = [a + b for a, b in zip(mine, value)] if isinstance(mine, list) else list(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            total[name] = (mine or 0) + value
    return total


def worker_metrics(answers: dict) -> dict:
    """The workers' METRICS answers (by worker id), as `sozuctl metrics` shows them: each
    worker's snapshot and their aggregate."""
    workers = {str(wid): a.get("data") or {} for wid, a in answers.items() if a.get("status") == "OK"}
    return {"workers": workers, "total": aggregate(workers)}


def aggregate(snapshots: dict[str, dict]) -> dict:
    """Sum the workers' snapshots; the request time histogram becomes its percentiles."""
    total: dict = {}
    for snapshot in snapshots.values():
        merge(total, snapshot)
    buckets = total.pop("request_time_buckets", None) or [0] * (len(BUCKETS_MS) + 1)
    total.update(percentiles(buckets))
    return total
