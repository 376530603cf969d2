"""A worker's metrics: what each request adds, what a snapshot says, percentiles."""
from sozu.metrics import BUCKETS_MS, CORE_COUNTERS, Metrics, percentiles


class Exchange:
    def __init__(self, status, bytes_in=10, bytes_out=100, ms=3.0):
        self.status, self.bytes_in, self.bytes_out, self.ms = status, bytes_in, bytes_out, ms

    def duration_ms(self):
        return self.ms


def test_a_fresh_snapshot_shows_every_core_counter_at_zero():
    snapshot = Metrics().snapshot({"active_connections": 4})
    assert all(snapshot[name] == 0 for name in CORE_COUNTERS)
    assert snapshot["active_connections"] == 4
    assert snapshot["request_time_buckets"] == [0] * (len(BUCKETS_MS) + 1)


def test_requests_add_their_status_class_bytes_and_time():
    metrics = Metrics()
    for exchange in (Exchange(200), Exchange(204, ms=0.5), Exchange(503, ms=70), Exchange(101),
                     Exchange(0, bytes_out=0)):  # 0: the client left before any answer
        metrics.record(exchange)
    metrics.incr("backend_connect_errors")
    metrics.incr("refused_connections", 3)
    snapshot = metrics.snapshot()
    assert snapshot["requests"] == 5
    assert (snapshot["status_1xx"], snapshot["status_2xx"], snapshot["status_5xx"]) == (1, 2, 1)
    assert snapshot["status_none"] == 1 and snapshot["status_4xx"] == 0
    assert (snapshot["bytes_in"], snapshot["bytes_out"]) == (50, 400)
    assert (snapshot["backend_connect_errors"], snapshot["refused_connections"]) == (1, 3)
    buckets = snapshot["request_time_buckets"]
    assert buckets[0] == 1 and buckets[BUCKETS_MS.index(5)] == 3 and buckets[BUCKETS_MS.index(100)] == 1
    assert percentiles(buckets)["p50_ms"] == 5.0


def test_clear_starts_over():
    metrics = Metrics()
    metrics.record(Exchange(200))
    metrics.incr("tcp_connections")
    metrics.clear()
    snapshot = metrics.snapshot()
    assert snapshot["requests"] == 0 and snapshot["status_2xx"] == 0 and "tcp_connections" not in snapshot
