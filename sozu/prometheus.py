"""The Prometheus text exposition format (version 0.0.4) of sozu's metrics (pure).

`render(total, master)` takes the workers' merged snapshot (sozu.metrics.aggregate, as
`sozuctl metrics` shows it) and what the master knows itself (workers, restarts, upgrades,
orders applied, backend health), and returns the text a Prometheus server scrapes from
GET /metrics. Names follow Prometheus conventions: a `sozu_` prefix, `_total` for counters,
`_seconds` and `_bytes` for units, labels for what varies (application, backend, status class).
Histograms are cumulative with `le` bounds in seconds, a `+Inf` bucket, `_sum` and `_count`.
"""
from __future__ import annotations

from sozu.metrics import BUCKETS_MS, NO_APPLICATION, STATUS_CLASSES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Worker counters that are levels, not totals.
GAUGES = {"active_connections": "Client connections open now.",
          "idle_backend_connections": "Idle backend connections kept for reuse."}
# Worker counters shown under their own names with labels, not as plain totals.
LABELLED = {"requests", *STATUS_CLASSES, "bytes_in", "bytes_out", "backend_connect_errors",
            "accepted_connections",
            "applications", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms"}


class _Text:
    def __init__(self):
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: dict, value) -> None:
        if labels:
            inner = ",".join(f'{key}="{_escape(str(v))}"' for key, v in labels.items())
            name = f"{name}{{{inner}}}"
        self.lines.append(f"{name} {_number(value)}")

    def histogram(self, name: str, help_text: str, series: list[tuple[dict, list, float]]) -> None:
        """series: (labels, buckets as sozu.metrics counts them, sum in milliseconds)."""
        self.family(name, "histogram", help_text)
        for labels, buckets, total_ms in series:
            seen = 0
            for bound, count in zip(BUCKETS_MS, buckets):
                seen += count
                self.sample(f"{name}_bucket", {**labels, "le": _number(bound / 1000)}, seen)
            count = sum(buckets)
            self.sample(f"{name}_bucket", {**labels, "le": "+Inf"}, count)
            self.sample(f"{name}_sum", labels, total_ms / 1000)
            self.sample(f"{name}_count", labels, count)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value) -> str:
    if isinstance(value, float):
        return repr(value) if value != int(value) or abs(value) >= 1e15 else str(int(value))
    return str(value)


def _label(app_id: str) -> str:
    return "" if app_id == NO_APPLICATION else app_id


def render(total: dict, master: dict) -> str:
    text = _Text()
    applications = total.get("applications") or {}
    rows = [(app_id, backend, counts) for app_id, app in sorted(applications.items())
            for backend, counts in sorted((app.get("backends") or {}).items())]

    text.family("sozu_http_requests_total", "counter",
                "HTTP requests answered, by application, backend and status class "
                "(none: the client left before an answer).")
    for app_id, backend, counts in rows:
        for status_class in STATUS_CLASSES:
            if counts.get(status_class):
                text.sample("sozu_http_requests_total", {
                    "application": _label(app_id), "backend": _label(backend),
                    "status_class": status_class[len("status_"):]}, counts[status_class])
    for name, key, help_text in (
            ("sozu_http_received_bytes_total", "bytes_in", "Bytes received from HTTP clients."),
            ("sozu_http_sent_bytes_total", "bytes_out", "Bytes sent to HTTP clients.")):
        text.family(name, "counter", help_text)
        for app_id, backend, counts in rows:
            if counts.get(key):
                text.sample(name, {"application": _label(app_id), "backend": _label(backend)}, counts[key])
    text.family("sozu_backend_connect_errors_total", "counter", "Failed connects to a backend.")
    for app_id, backend, counts in rows:
        if counts.get("connect_errors"):
            text.sample("sozu_backend_connect_errors_total",
                        {"application": app_id, "backend": backend}, counts["connect_errors"])
    text.family("sozu_backend_retries_total", "counter",
                "Requests sent to the next backend after a failed connect.")
    for app_id, app in sorted(applications.items()):
        if app.get("retries"):
            text.sample("sozu_backend_retries_total", {"application": app_id}, app["retries"])
    timed = [(app_id, app) for app_id, app in sorted(applications.items())
             if "request_time_buckets" in app]
    text.histogram("sozu_http_request_duration_seconds",
                   "Time from a request's first byte to the end of its answer.",
                   [({"application": _label(app_id)}, app["request_time_buckets"],
                     app.get("request_time_sum_ms", 0.0)) for app_id, app in timed])
    text.histogram("sozu_backend_response_duration_seconds",
                   "Time from the backend connection being ready to its answer's head.",
                   [({"application": app_id}, app["backend_time_buckets"],
                     app.get("backend_time_sum_ms", 0.0)) for app_id, app in timed
                    if app_id != NO_APPLICATION])

    text.family("sozu_backend_up", "gauge",
                "1 when the backend is in balancing: its health checks pass, or without checks "
                "no worker rests it after a failed connect.")
    for row in master.get("backends", ()):
        if row["checked"]:
            up = row["up"]
        else:
            counts = (applications.get(row["app_id"]) or {}).get("backends", {}).get(row["address"], {})
            up = not counts.get("resting")
        text.sample("sozu_backend_up", {"application": row["app_id"], "backend_id": row["backend_id"],
                                        "backend": row["address"]}, 1 if up else 0)
    for name, help_text in GAUGES.items():
        text.family(f"sozu_{name}", "gauge", help_text)
        text.sample(f"sozu_{name}", {}, total.get(name, 0))
    text.family("sozu_accepted_connections_total", "counter", "Client connections accepted.")
    text.sample("sozu_accepted_connections_total", {}, total.get("accepted_connections", 0))
    for name, value in sorted(total.items()):
        if name in LABELLED or name in GAUGES or not isinstance(value, int):
            continue
        metric = f"sozu_{name}" if name.endswith("_total") else f"sozu_{name}_total"
        text.family(metric, "counter", f"Worker counter {name}.")
        text.sample(metric, {}, value)

    text.family("sozu_workers", "gauge", "Worker processes, by state.")
    for state, count in sorted(master.get("workers_by_state", {}).items()):
        text.sample("sozu_workers", {"state": state}, count)
    for name, key, help_text in (
            ("sozu_worker_restarts_total", "worker_restarts", "Workers started again after they died or were replaced."),
            ("sozu_worker_upgrades_total", "worker_upgrades", "Workers upgraded one by one (sozuctl upgrade --worker)."),
            ("sozu_orders_applied_total", "orders_applied", "State orders the master applied (changes, loads)."),
            ("sozu_health_changes_total", "health_changes", "Backends that went up or down by their health checks.")):
        text.family(name, "counter", help_text)
        text.sample(name, {}, master.get(key, 0))
    text.family("sozu_master_generation", "gauge", "Master upgrades since the first start.")
    text.sample("sozu_master_generation", {}, master.get("generation", 0))
    return "\n".join(text.lines) + "\n"
