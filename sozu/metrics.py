"""Per-worker counters and a request-time histogram (pure).

Counters are plain integers in a dict: one increment per event, no locks (a worker is one thread).
Request times go into fixed logarithmic buckets, so percentiles cost nothing per request and a
worker's memory stays flat however long it runs. The master sums workers' snapshots.
"""
from __future__ import annotations

import bisect

# Upper bounds of the buckets, in milliseconds; the last bucket is open-ended.
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)
PERCENTILES = (50, 90, 99, 99.9)
# Always in a snapshot, zero or not, so that an operator sees them before the first request.
CORE_COUNTERS = ("requests", "status_1xx", "status_2xx", "status_3xx", "status_4xx", "status_5xx",
                 "bytes_in", "bytes_out", "backend_connect_errors")

# Index: status // 100 (0 when no status was sent)
STATUS_CLASSES = ("status_none", "status_1xx", "status_2xx", "status_3xx", "status_4xx", "status_5xx")


class Metrics:
    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.counters: dict[str, int] = dict.fromkeys(CORE_COUNTERS, 0)
        # What every request adds to: attributes and a list, cheaper than dict updates; they
        # join the counters in a snapshot.
        self.requests = self.bytes_in = self.bytes_out = 0
        self.status_classes = [0] * len(STATUS_CLASSES)
        self.request_times = [0] * (len(BUCKETS_MS) + 1)

    def incr(self, name: str, value: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + value

    def record(self, exchange) -> None:
        """One finished request: its status class, bytes and time."""
        self.requests += 1
        self.bytes_in += exchange.bytes_in
        self.bytes_out += exchange.bytes_out
        status = exchange.status
        self.status_classes[status // 100 if 100 <= status < 600 else 0] += 1
        self.request_times[bisect.bisect_left(BUCKETS_MS, exchange.duration_ms())] += 1

    def snapshot(self, gauges: dict[str, int] | None = None) -> dict:
        data = dict(self.counters)
        data["requests"] += self.requests
        data["bytes_in"] += self.bytes_in
        data["bytes_out"] += self.bytes_out
        for name, count in zip(STATUS_CLASSES, self.status_classes):
            if count:
                data[name] = data.get(name, 0) + count
        if gauges:
            data.update(gauges)
        data["request_time_buckets"] = list(self.request_times)
        return data


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


def aggregate(snapshots: dict[str, dict]) -> dict:
    """Sum the workers' snapshots; histogram buckets add up too."""
    total: dict = {}
    buckets = [0] * (len(BUCKETS_MS) + 1)
    for snapshot in snapshots.values():
        for name, value in snapshot.items():
            if name == "request_time_buckets":
                buckets = [a + b for a, b in zip(buckets, value)]
            else:
                total[name] = total.get(name, 0) + value
    total.update(percentiles(buckets))
    return total
