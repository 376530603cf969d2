"""Human output of sozuctl: aligned plain-text tables built from answer data (pure).

Renderers are lenient about what they are given: a field they do not know is shown as compact
JSON rather than dropped, a field that is missing is shown as "-", so a newer proxy never makes
an older sozuctl fail to print.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sozu.metrics import percentiles

MISSING = "-"


def cell(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns separated by two spaces; a column of numbers is right-aligned."""
    rows = [list(row) for row in rows]
    texts = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    right = [True] * len(headers)
    for row, text in zip(rows, texts):
        for i, (value, t) in enumerate(zip(row, text)):
            widths[i] = max(widths[i], len(t))
            right[i] = right[i] and (value is None or _numeric(value))
    right = [r and any(_numeric(row[i]) for row in rows) for i, r in enumerate(right)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(t.rjust(w) if r else t.ljust(w)
                         for t, w, r in zip(values, widths, right)).rstrip()

    return "\n".join([line(headers)] + [line(t) for t in texts])


def _worker_sort_key(worker_id: Any) -> tuple:
    # The master first, then workers by number.
    text = str(worker_id)
    if text == "master":
        return (0, 0, "")
    return (1, int(text), "") if text.isdigit() else (2, 0, text)


# --- status ----------------------------------------------------------------------------------

def status(data: Any) -> str:
    workers = sorted(_as_dict(data).get("workers") or [],
                     key=lambda w: _worker_sort_key(_as_dict(w).get("id")))
    with_generation = any("generation" in _as_dict(w) for w in workers)
    headers = ["ID", "PID", "STATE", "RESTARTS"] + (["GENERATION"] if with_generation else [])
    rows = []
    for worker in workers:
        w = _as_dict(worker)
        row = [w.get("id"), w.get("pid"), w.get("state"), w.get("restarts")]
        rows.append(row + ([w.get("generation")] if with_generation else []))
    text = table(headers, rows)
    checked = [_as_dict(b) for b in _as_list(_as_dict(data).get("backends")) if _as_dict(b).get("checked")]
    if checked:  # the active health checks' verdicts (sozuctl backend list has the details)
        down = [b for b in checked if not b.get("up")]
        text += f"\n\nbackends with health checks: {len(checked) - len(down)} up, {len(down)} down"
        for b in down:
            since = b.get("since")
            text += (f"\n  down: {b.get('app_id')} {b.get('backend_id')} ({b.get('address')}) since "
                     f"{_time(since) if isinstance(since, (int, float)) else '-'}: {b.get('reason') or '-'}")
    for report in map(_as_dict, _as_list(_as_dict(data).get("providers"))):
        refused = [_as_dict(r) for r in _as_list(report.get("refused"))]  # docs/etcd.md
        text += f"\n\n{report.get('provider')} provider (pid {report.get('pid')}): {len(refused)} keys refused"
        for r in refused:
            text += f"\n  refused: {r.get('key')}: {r.get('reason')}"
    return text


# --- backend list ----------------------------------------------------------------------------

def backends(data: Any, app_id: str | None = None) -> str:
    """One line per backend: its health as the master's checks and the workers' passive health
    see it. A backend without active checks is "down" while a worker rests it after a failed
    connect; the workers that do are named."""
    data = _as_dict(data)
    workers = _as_dict(data.get("workers"))
    passive: dict[tuple, list] = {}
    for worker_id, rows in sorted(workers.items(), key=lambda item: _worker_sort_key(item[0])):
        for row in _as_list(rows):
            row = _as_dict(row)
            key = (row.get("app_id"), row.get("backend_id"), row.get("address"))
            passive.setdefault(key, []).append((worker_id, row))
    lines = []
    for row in _as_list(data.get("master")):
        row = _as_dict(row)
        if app_id is not None and row.get("app_id") != app_id:
            continue
        key = (row.get("app_id"), row.get("backend_id"), row.get("address"))
        resting = [(w, r) for w, r in passive.get(key, []) if r.get("resting")]
        check = _as_dict(row.get("check"))
        if row.get("checked"):
            health = "up" if row.get("up") else "down"
            error = row.get("reason") or check.get("last_error")
        elif resting:
            health = f"down (passive, worker {','.join(str(w) for w, _ in resting)})"
            error = resting[0][1].get("last_error")
        else:
            health = "up"
            error = next((r.get("last_error") for _, r in passive.get(key, []) if r.get("last_error")), None)
        since = row.get("since")
        lines.append([row.get("app_id"), row.get("backend_id"), row.get("address"),
                      "yes" if row.get("backup") else "no",
                      "active" if row.get("checked") else "passive", health,
                      _time(since) if isinstance(since, (int, float)) else None, error])
    return table(["APPLICATION", "BACKEND", "ADDRESS", "BACKUP", "CHECKS", "HEALTH", "SINCE",
                  "LAST ERROR"], lines)


def _time(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


# --- metrics ---------------------------------------------------------------------------------

def metrics(data: Any) -> str:
    """The counters, a column per worker and the total; then, per application and backend,
    the totals of their requests (`--json` has each worker's too)."""
    data = _as_dict(data)
    workers = _as_dict(data.get("workers"))
    total = _as_dict(data.get("total"))
    workers = {w: _with_percentiles(_without_applications(c)) for w, c in workers.items()}
    applications = _as_dict(total.get("applications"))
    total = _with_percentiles(_without_applications(total))
    text = _counters_table(workers, total)
    if applications:
        text += "\n\n" + _applications_table(applications)
    return text


_APPLICATION_COLUMNS = ("requests", "status_2xx", "status_3xx", "status_4xx", "status_5xx",
                        "bytes_in", "bytes_out", "connect_errors")


def _without_applications(counters: Any) -> dict:
    return {k: v for k, v in _as_dict(counters).items() if k != "applications"}


def _applications_table(applications: dict) -> str:
    rows = []
    for app_id, app in sorted(applications.items()):
        for backend, counts in sorted(_as_dict(_as_dict(app).get("backends")).items()):
            counts = _as_dict(counts)
            rows.append([app_id, backend] + [counts.get(name, 0) for name in _APPLICATION_COLUMNS])
    return table(["APPLICATION", "BACKEND", "REQUESTS", "2XX", "3XX", "4XX", "5XX", "BYTES IN",
                  "BYTES OUT", "CONNECT ERRORS"], rows)


def _counters_table(workers: dict, total: dict) -> str:
    worker_ids = sorted(workers, key=_worker_sort_key)
    names = set(total)
    for counters in workers.values():
        names.update(_as_dict(counters))
    headers = ["METRIC"] + [f"WORKER {w}" if str(w) != "master" else "MASTER"
                            for w in worker_ids] + ["TOTAL"]
    rows = []
    for name in sorted(names):
        row = [name] + [_as_dict(workers[w]).get(name) for w in worker_ids]
        rows.append(row + [total.get(name)])
    return table(headers, rows)


def _with_percentiles(counters: dict) -> dict:
    """A worker's request-time histogram is shown as the percentiles of the total column."""
    buckets = counters.get("request_time_buckets")
    if not isinstance(buckets, list):
        return counters
    shown = {k: v for k, v in counters.items() if k != "request_time_buckets"}
    try:
        shown.update(percentiles(buckets))
    except (TypeError, IndexError):
        shown["request_time_buckets"] = buckets
    return shown


# --- query applications ----------------------------------------------------------------------

def applications(data: Any, table_of: Callable[[Any], str] | None = None) -> str:
    """One table per source (master, each worker), or one table when they all agree.
    The master may send its applications' hashes instead of their views: those are shown
    apart, as a table of hashes. `table_of` renders one source's applications."""
    table_of = table_of or application_table
    data = _as_dict(data)
    sources, hashes = [], None
    master = data.get("master")
    if isinstance(master, dict):
        hashes = table(["APPLICATION", "HASH"], sorted(master.items())) if master \
            else "no application"
    elif master is not None:
        sources.append(("master", master))
    workers = _as_dict(data.get("workers"))
    for worker_id in sorted(workers, key=_worker_sort_key):
        sources.append((f"worker {worker_id}", workers[worker_id]))
    out = []
    if not sources:
        out.append("no answer from any worker")
    elif len(sources) > 1 and all(_canonical(apps) == _canonical(sources[0][1])
                                  for _, apps in sources):
        names = ", ".join(name for name, _ in sources)
        out.append(f"{table_of(sources[0][1])}\n({names} agree)")
    else:
        out.extend(f"{name}:\n{table_of(apps)}" for name, apps in sources)
    if hashes is not None:
        out.append(f"master (application hashes):\n{hashes}")
    return "\n\n".join(out)


def application_table(apps: Any) -> str:
    rows = []
    for app in _as_list(apps):
        rows.extend(_application_rows(_as_dict(app)))
    if not rows:
        return "no application"
    return table(["APPLICATION", "KIND", "ADDRESS", "ROUTE / BACKEND", "SETTINGS"], rows)


def _application_rows(app: dict) -> list[list]:
    """Accepts Sozu 0.11's QueryAnswerApplication ({configuration, http_frontends,
    https_frontends, tcp_frontends, backends}) or a flat {app_id, ...} object."""
    config = _as_dict(app.get("configuration")) or {
        k: v for k, v in app.items() if not isinstance(v, (list, dict))}
    app_id = config.get("app_id") or app.get("app_id") or MISSING
    rows = [[app_id, "application", "", "", _settings(config)]] if config else []
    for kind in ("http", "https", "tcp"):
        for front in _as_list(app.get(f"{kind}_frontends")):
            front = _as_dict(front)
            route = "" if kind == "tcp" else front_route(front)
            rows.append([front.get("app_id", app_id), f"{kind} frontend",
                         front.get("address"), route, front_actions(front)])
    for backend in _as_list(app.get("backends")):
        backend = _as_dict(backend)
        rows.append([backend.get("app_id", app_id), "backend", backend.get("address"),
                     backend.get("backend_id"), _backend_settings(backend)])
    return rows


def frontends(data: Any) -> str:
    """`frontend list`: the http(s) frontends of QUERY APPLICATIONS answers, with their rules."""
    return applications(data, frontend_table)


def frontend_table(apps: Any) -> str:
    rows = []
    for app in map(_as_dict, _as_list(apps)):
        for kind in ("http", "https", "tcp"):
            for front in map(_as_dict, _as_list(app.get(f"{kind}_frontends"))):
                rows.append([front.get("app_id", MISSING), kind, front.get("address"),
                             "" if kind == "tcp" else front_route(front),
                             ",".join(map(str, _as_list(front.get("methods")))) or "*",
                             front_actions(front)])
    if not rows:
        return "no frontend"
    return table(["APPLICATION", "PROTOCOL", "ADDRESS", "ROUTE", "METHODS", "ACTIONS"], rows)


def front_route(front: dict) -> str:
    """`example.com/api` (prefix), `example.com =/login` (equals), `example.com ~^/u/` (regex)."""
    path = _as_dict(front.get("path"))
    mark = {"EQUALS": " =", "REGEX": " ~"}.get(path.get("kind"), "")
    return f"{front.get('hostname', MISSING)}{mark}{path.get('value', front.get('path_begin') or '')}"


def front_actions(front: dict) -> str:
    """What a front does besides forwarding: `redirect=301 https://b.com`, `rewrite host=...`."""
    parts = []
    redirect = _as_dict(front.get("redirect"))
    if redirect:
        target = "".join(str(part) for part in (
            f"{redirect['scheme']}://" if redirect.get("scheme") else "", redirect.get("host") or "",
            f":{redirect['port']}" if redirect.get("port") else "", redirect.get("path") or "",
            f"?{redirect['query']}" if redirect.get("query") else ""))
        parts.append(f"redirect={redirect.get('status', MISSING)}" + (f" {target}" if target else ""))
    rewrite = _as_dict(front.get("rewrite"))
    for key in ("host", "strip_prefix", "path_regex", "path_replacement"):
        if rewrite.get(key) is not None:
            parts.append(f"rewrite.{key}={rewrite[key]}")
    for direction in ("request", "response"):
        for edit in map(_as_dict, _as_list(front.get(f"{direction}_headers"))):
            value = f"={edit['value']}" if edit.get("value") else ""
            parts.append(f"{direction}:{str(edit.get('action', MISSING)).lower()} "
                         f"{edit.get('name', MISSING)}{value}")
    return " ".join(parts)


def _settings(config: dict) -> str:
    parts = []
    if config.get("load_balancing_policy"):
        parts.append(str(config["load_balancing_policy"]))
    if config.get("sticky_session"):
        parts.append("sticky")
    if config.get("https_redirect"):
        parts.append("https-redirect")
    if config.get("proxy_protocol"):
        parts.append(f"proxy-protocol={config['proxy_protocol']}")
    return " ".join(parts)


def _backend_settings(backend: dict) -> str:
    parts = []
    weight = _as_dict(backend.get("load_balancing_parameters")).get("weight")
    if weight is not None:
        parts.append(f"weight={weight}")
    if backend.get("sticky_id"):
        parts.append(f"sticky_id={backend['sticky_id']}")
    if backend.get("backup"):
        parts.append("backup")
    return " ".join(parts)


# --- state dump ----------------------------------------------------------------------------

def state(data: Any) -> str:
    """DUMP_STATE: {listeners: [{address, protocol, active, config}], applications: [views as
    in query applications], certificates: [{address, fingerprint, names}]}; other keys are
    shown as generic tables."""
    data = dict(_as_dict(data))
    out = []
    if "listeners" in data:
        rows = []
        for listener in _as_list(data.pop("listeners")):
            listener = _as_dict(listener)
            config = _as_dict(listener.get("config"))
            rows.append([listener.get("protocol"), listener.get("address"),
                         listener.get("active"), config.get("public_address"),
                         _listener_settings(config)])
        out.append("Listeners:\n" + (table(["PROTOCOL", "ADDRESS", "ACTIVE", "PUBLIC ADDRESS",
                                             "SETTINGS"], rows) if rows else "(none)"))
    if "applications" in data:
        out.append("Applications:\n" + application_table(data.pop("applications")))
    if "certificates" in data:
        rows = [[c.get("address"), c.get("fingerprint"), ",".join(map(str, c.get("names") or []))
                 or MISSING] for c in map(_as_dict, _as_list(data.pop("certificates")))]
        out.append("Certificates:\n" + (table(["ADDRESS", "FINGERPRINT", "NAMES"], rows)
                                         if rows else "(none)"))
    if data:
        out.append(_generic_sections(data))
    return "\n\n".join(out) if out else "(empty state)"


def _listener_settings(config: dict) -> str:
    parts = [f"{name}={config[key]}s" for name, key in (
        ("front", "front_timeout"), ("back", "back_timeout"), ("connect", "connect_timeout"),
        ("request", "request_timeout")) if config.get(key) is not None]
    if config.get("expect_proxy"):
        parts.append("expect-proxy")
    if config.get("versions"):
        parts.append("+".join(map(str, config["versions"])))
    if config.get("alpn"):
        parts.append("alpn=" + ",".join(map(str, config["alpn"])))
    return " ".join(parts)


def _generic_sections(data: dict) -> str:
    out = []
    for key, value in data.items():
        title = key.replace("_", " ").capitalize()
        out.append(f"{title}:\n{_generic_table(value)}")
    return "\n\n".join(out) if out else "(empty state)"


def _generic_table(value: Any) -> str:
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        columns = _columns(value.values())
        return table(["KEY"] + [c.upper() for c in columns],
                     [[k] + [v.get(c) for c in columns] for k, v in value.items()])
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        columns = _columns(value)
        return table([c.upper() for c in columns], [[v.get(c) for c in columns] for v in value])
    if isinstance(value, dict):
        return table(["KEY", "VALUE"], list(value.items())) if value else "(none)"
    if isinstance(value, list):
        return "\n".join(cell(v) for v in value) if value else "(none)"
    return cell(value)


def _columns(objects: Iterable[dict]) -> list[str]:
    columns: list[str] = []
    for obj in objects:
        columns.extend(k for k in obj if k not in columns)
    return columns


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
