"""Router speed with many frontends: 10,000 frontends over 1,000 hosts by default.

Three measures, printed as one summary (docs/routing.md says what routing costs):

1. Applying one order, in process: `ConfigState.dispatch` (what the master does) and dispatch
   plus the derived tables a worker rebuilds after it (`Router.from_state` with the previous
   router, `Balancer.update`), for an ADD_HTTP_FRONT and its REMOVE on a state built from the
   generated configuration. Median and 99th percentile over --orders orders.
2. Applying one order through a running sozu (2 workers): the round trip of an order on the
   command socket, which the master answers only once every worker has applied it; so each
   side's own share is below it.
3. Small-request throughput (wrk through ../shared/bench/proxybench.py, interleaved rounds,
   medians): sozu with one frontend beside sozu with the generated 10,000, the request on a
   host that has as many rules as the others and is served by its last (the "/" prefix).

    .venv/bin/python bench/router_bench.py [--hosts 1000] [--per-host 10] [--rounds 3]
                                           [--duration 5] [--wait-idle S] [--no-throughput]

The figures are whole-machine figures: on a machine shared with other work they move by 10 %
or more between runs, so quote the ratio of one run, and say what else was running.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sozu import config as config_module  # noqa: E402
from sozu.lb import Balancer  # noqa: E402
from sozu.messages import Order  # noqa: E402
from sozu.router import Router  # noqa: E402
from sozu.state import ConfigState  # noqa: E402

SHARED_BENCH = Path(os.environ.get("SOZU_SHARED", ROOT.parent / "shared")) / "bench"
BENCH_HOST = "127.0.0.1"  # what wrk sends as Host (the port is stripped)

# The rules of every host: prefixes, equals, regexes and a method-limited prefix. A request for
# /small on the benched host misses every one of them but the "/" prefix, tried last.
RULES = [
    {"path": "/api/v1"}, {"path": "/api"}, {"path": "/api", "methods": ["POST", "PUT"]},
    {"path": "/static/"}, {"path": "/img/"}, {"path": "/"},
    {"path": "/login", "path_type": "EQUALS"}, {"path": "/logout", "path_type": "EQUALS"},
    {"path": "^/u/[0-9]+$", "path_type": "REGEX"}, {"path": "^/item/[a-z-]+$", "path_type": "REGEX"},
]


def toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[ " + ", ".join(map(toml, value)) + " ]"
    return json.dumps(value)


def config_template(hosts: int, per_host: int) -> str:
    """A proxybench config template ({listen_port}, {backend_port}, {tmpdir} filled in by it):
    `hosts` applications of `per_host` frontends each, plus the benched host with as many."""
    rules = (RULES * (per_host // len(RULES) + 1))[:per_host]
    if {"path": "/"} not in rules:
        rules[-1] = {"path": "/"}
    text = [(SHARED_BENCH / "sozu.toml.tmpl").read_text().split("[applications.bench]")[0]]
    names = [BENCH_HOST] + [f"h{i}.bench.test" for i in range(hosts - 1)]
    for i, hostname in enumerate(names):
        fronts = ", ".join(toml({"address": "127.0.0.1:{listen_port}", "hostname": hostname, **rule})
                           for rule in rules)
        text.append(f'[applications.app{i}]\nprotocol = "http"\nfrontends = [ {fronts} ]\n'
                    'backends = [ "127.0.0.1:{backend_port}" ]\n')
    return "\n".join(text)


def rendered(template: str, listen_port: int, backend_port: int, tmpdir: str) -> str:
    return (template.replace("{listen_port}", str(listen_port))
            .replace("{backend_port}", str(backend_port)).replace("{tmpdir}", tmpdir))


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def toggle_orders(count: int, address: str) -> list[Order]:
    """ADD then REMOVE of one more front on an existing host, `count` orders in all."""
    data = {"app_id": "app1", "address": address, "hostname": "h0.bench.test",
            "path": {"kind": "REGEX", "value": "^/bench/[0-9]+$"}}
    return [Order.from_json({"type": "ADD_HTTP_FRONT" if i % 2 == 0 else "REMOVE_HTTP_FRONT",
                             "data": data}) for i in range(count)]


def apply_in_process(template: str, orders: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.toml"
        path.write_text(rendered(template, 18080, 18081, tmp))
        started = time.perf_counter()
        state = ConfigState.from_orders(config_module.load(str(path)).to_orders())
        loaded = time.perf_counter() - started
    router, balancer = Router.from_state(state), Balancer()
    balancer.update(state)
    master, worker = [], []
    for order in toggle_orders(orders, "127.0.0.1:18080"):
        started = time.perf_counter()
        state.dispatch(order)
        dispatched = time.perf_counter()
        router = Router.from_state(state, router)
        balancer.update(state)
        done = time.perf_counter()
        master.append((dispatched - started) * 1000)
        worker.append((done - started) * 1000)
    assert router.route_http("127.0.0.1:18080", "h0.bench.test", b"/u/1") is not None
    lookups = 200_000
    route = router.route_http
    started = time.perf_counter()
    for _ in range(lookups):
        route("127.0.0.1:18080", BENCH_HOST, b"/small", False, b"GET")
    lookup_us = (time.perf_counter() - started) / lookups * 1e6
    return {"fronts": state.front_count(), "load_s": loaded, "lookup_us": lookup_us,
            "master_ms": (statistics.median(master), percentile(master, 99)),
            "worker_ms": (statistics.median(worker), percentile(worker, 99))}


def apply_through_sozu(template: str, orders: int) -> dict:
    """Round trips of orders on the command socket of a running sozu (2 workers)."""
    tmp = tempfile.mkdtemp(prefix="router-bench-")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = Path(tmp) / "bench.toml"
    path.write_text(rendered(template, port, 9, tmp))  # no backend needed: nothing is proxied
    proc = subprocess.Popen([sys.executable, str(ROOT / "sozu.py"), "start", "-c", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        sock_path = os.path.join(tmp, "sozu.sock")
        deadline = time.monotonic() + 120
        while not _workers_ready(sock_path):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("sozu did not start with the generated configuration")
            time.sleep(0.2)
        trips = []
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(sock_path)
            for i, order in enumerate(toggle_orders(orders, f"127.0.0.1:{port}")):
                started = time.perf_counter()
                answer = _ask(sock, {"id": f"b{i}", "version": 0, "type": "PROXY", "data": order.to_json()})
                trips.append((time.perf_counter() - started) * 1000)
                if answer["status"] != "OK":
                    raise RuntimeError(f"order refused: {answer['message']}")
        return {"round_trip_ms": (statistics.median(trips), percentile(trips, 99))}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


def _ask(sock, request: dict) -> dict:
    sock.sendall(json.dumps(request).encode() + b"\0")
    buf = b""
    while True:
        buf += sock.recv(1 << 20)
        while b"\0" in buf:
            raw, buf = buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == request["id"] and answer.get("status") in ("OK", "ERROR"):
                return answer


def _workers_ready(sock_path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(sock_path)
            answer = _ask(sock, {"id": "w", "version": 0, "type": "LIST_WORKERS"})
    except OSError:
        return False
    rows = (answer.get("data") or {}).get("workers") or []
    return len([row for row in rows if row.get("id") != "master" and row.get("state") == "running"]) >= 2


def throughput(template: str, rounds: int, duration: int, wait_idle: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="router-bench-")
    many = Path(tmp) / "sozu-10k.toml.tmpl"
    many.write_text(template)
    command = f"{sys.executable} {ROOT / 'sozu.py'} start -c {{config}}"
    out = Path(tmp) / "out.json"
    subprocess.run([sys.executable, str(SHARED_BENCH / "proxybench.py"), "--only", "sozu-1,sozu-many",
                    "--proxy", f"sozu-1={command}", "--proxy", f"sozu-many={command}",
                    "--proxy-config-template", f"sozu-1={SHARED_BENCH / 'sozu.toml.tmpl'}",
                    "--proxy-config-template", f"sozu-many={many}", "--ready-timeout", "120",
                    "--scenarios", "small", "--rounds", str(rounds), "--duration", str(duration),
                    "--wait-idle", str(wait_idle),
                    "--json", str(out)], check=True)
    results = json.loads(out.read_text())
    shutil.rmtree(tmp, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--per-host", type=int, default=10)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--wait-idle", type=int, default=0, metavar="SECONDS",
                        help="let proxybench wait up to this long for a quiet machine before each run")
    parser.add_argument("--no-throughput", action="store_true")
    args = parser.parse_args()
    template = config_template(args.hosts, args.per_host)
    local = apply_in_process(template, args.orders)
    print(f"{local['fronts']} frontends over {args.hosts} hosts (config parsed and applied in "
          f"{local['load_s']:.1f} s)")
    print("one order, in process (median / p99): master %.2f / %.2f ms, worker %.2f / %.2f ms"
          % (*local["master_ms"], *local["worker_ms"]))
    print(f"one lookup of GET {BENCH_HOST}/small (served by the last of its {args.per_host} rules): "
          f"{local['lookup_us']:.2f} us")
    remote = apply_through_sozu(template, min(args.orders, 100))
    print("one order through a running sozu, master + 2 workers, round trip (median / p99): "
          "%.2f / %.2f ms" % remote["round_trip_ms"])
    if not args.no_throughput:
        small = throughput(template, args.rounds, args.duration, args.wait_idle)["summary"]["small"]
        one, many = small["sozu-1"], small["sozu-many"]
        for name, s in (("1 frontend", one), (f"{local['fronts']} frontends", many)):
            print(f"small requests, sozu with {name}: {s.get('rps') or 0:.0f} req/s (median of "
                  f"{s.get('ok_rounds')} rounds, spread {s.get('rps_min', 0):.0f}..{s.get('rps_max', 0):.0f}), "
                  f"p99 {s.get('p99_ms') or 0:.2f} ms, other CPU {s.get('other_cpu_pct') or 0:.0f}%")
        if one.get("rps") and many.get("rps"):
            print(f"throughput with {local['fronts']} frontends / with 1: {many['rps'] / one['rps']:.3f}")
        if one.get("proxy_cpu_us_per_req") and many.get("proxy_cpu_us_per_req"):
            print(f"proxy CPU per request with {local['fronts']} frontends / with 1: "
                  f"{many['proxy_cpu_us_per_req'] / one['proxy_cpu_us_per_req']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
