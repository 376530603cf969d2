"""A worker's metrics: what each request adds, what a snapshot says, percentiles."""
from sozu.metrics import BUCKETS_MS, CORE_COUNTERS, Metrics, aggregate, percentiles


class Exchange:
    def __init__(self, status, bytes_in=10, bytes_out=100, ms=3.0, app_id="-", backend="-",
                 backend_ms=None):
        self.status, self.bytes_in, self.bytes_out, self.ms = status, bytes_in, bytes_out, ms
        self.app_id, self.backend = app_id, backend
        self.connected = 100.0
        self.first_byte = 0.0 if backend_ms is None else 100.0 + backend_ms / 1000

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
    metrics.connect_error("app", "127.0.0.1:1", retried=True)
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


def test_requests_are_counted_per_application_and_backend():
    metrics = Metrics()
    metrics.record(Exchange(200, app_id="web", backend="127.0.0.1:1", backend_ms=3))
    metrics.record(Exchange(502, app_id="web", backend="127.0.0.1:1", ms=30, backend_ms=25))
    metrics.record(Exchange(200, app_id="web", backend="127.0.0.1:2", backend_ms=0.5))
    metrics.record(Exchange(404))  # no route: counted under no application
    metrics.connect_error("web", "127.0.0.1:3", retried=True)
    metrics.connect_error("web", "127.0.0.1:3", retried=False)
    snapshot = metrics.snapshot()
    assert snapshot["requests"] == 4 and snapshot["backend_connect_errors"] == 2
    web = snapshot["applications"]["web"]
    assert web["backends"]["127.0.0.1:1"] == {"requests": 2, "status_2xx": 1, "status_5xx": 1,
                                               "bytes_in": 20, "bytes_out": 200}
    assert web["backends"]["127.0.0.1:3"] == {"connect_errors": 2} and web["retries"] == 1
    assert sum(web["request_time_buckets"]) == 3 and web["request_time_sum_ms"] == 36.0
    assert web["backend_time_buckets"][0] == 1 and web["backend_time_buckets"][BUCKETS_MS.index(5)] == 1
    assert snapshot["applications"]["-"]["backends"]["-"]["status_4xx"] == 1


def test_snapshots_aggregate_key_by_key():
    one, two = Metrics(), Metrics()
    one.record(Exchange(200, app_id="web", backend="127.0.0.1:1"))
    two.record(Exchange(200, app_id="web", backend="127.0.0.1:1"))
    two.record(Exchange(500, app_id="api", backend="127.0.0.1:2"))
    total = aggregate({"0": one.snapshot({"active_connections": 2}),
                       "1": two.snapshot({"active_connections": 3})})
    assert total["requests"] == 3 and total["active_connections"] == 5
    assert total["applications"]["web"]["backends"]["127.0.0.1:1"]["requests"] == 2
    assert sum(total["applications"]["web"]["request_time_buckets"]) == 2
    assert total["applications"]["api"]["backends"]["127.0.0.1:2"]["status_5xx"] == 1
    assert total["p50_ms"] == 5.0 and "request_time_buckets" not in total


def test_disabled_metrics_count_nothing_and_keep_what_they_had():
    metrics = Metrics()
    metrics.record(Exchange(200))
    metrics.enabled = False
    metrics.record(Exchange(500))
    metrics.incr("refused_connections")
    metrics.connect_error("app", "127.0.0.1:1", retried=False)
    snapshot = metrics.snapshot({"active_connections": 2})
    assert (snapshot["requests"], snapshot["status_5xx"], snapshot["backend_connect_errors"]) == (1, 0, 0)
    assert "refused_connections" not in snapshot and snapshot["active_connections"] == 2
    metrics.enabled = True
    metrics.record(Exchange(500))
    assert metrics.snapshot()["status_5xx"] == 1
