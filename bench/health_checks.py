"""Active health checks, measured: how soon a dead backend leaves balancing and a healed one
comes back, and what checking 500 backends every second costs the small-request throughput.

    .venv/bin/python bench/health_checks.py [--rounds 3] [--duration 8] [--cycles 5]

Timing: a two-worker sozu in front of two backends, checked every 0.5 s (timeout 0.25 s,
rise 2, fall 3). One backend is stopped (connections refused), then brought back; then made to
hang (accepts, never answers), then healed; each time the script polls the master and both
workers (QUERY BACKENDS, every 10 ms) until all of them agree, and prints the times against the
bounds fall x interval + timeout and rise x interval.

Throughput: wrk (1 thread, 32 connections) against sozu (2 workers) and an nginx backend,
with no health checks, then with a second application of 500 backends checked every second
(HTTP checks of the same nginx), the two configurations alternating for --rounds rounds. The
medians and their ratio are printed, with the checks per second the master actually did and
the CPU time the master spent.

Loopback only. On a shared machine the figures move with the neighbours: alternate, repeat,
and quote ratios.
"""
from __future__ import annotations

import argparse
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.harness import (Backend, Sozu, free_port, http_apps_config,  # noqa: E402
                                       port_open, wait_for)
from tests.integration.load import cpu_seconds  # noqa: E402

INTERVAL, TIMEOUT, RISE, FALL = 0.5, 0.25, 2, 3


def nginx_backend(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    (tmp / "nginx").mkdir()
    conf = tmp / "nginx" / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {tmp}/nginx/nginx.pid;
error_log {tmp}/nginx/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")
    process = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(tmp / "nginx"),
                                "-c", str(conf), "-g", "daemon off;"], start_new_session=True)
    wait_for(lambda: port_open(port), 10, what="nginx")
    return process, port


def views(s: Sozu, backend_id: str) -> set:
    answer = s.order("QUERY", {"type": "BACKENDS"})
    sources = [answer["data"]["master"], *answer["data"]["workers"].values()]
    return {row["up"] for rows in sources for row in rows if row["backend_id"] == backend_id}


def until(s: Sozu, backend_id: str, up: bool, started: float) -> float:
    while views(s, backend_id) != {up}:
        if time.monotonic() - started > 30:
            raise RuntimeError(f"{backend_id} never went {'up' if up else 'down'}")
        time.sleep(0.01)
    return time.monotonic() - started


class Hang:
    """A server that accepts connections on a port and never answers."""

    def __init__(self, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.held: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def stop(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way, or it keeps listening
        self.sock.close()
        for conn in self.held:
            conn.close()


def timing(tmp: Path, nginx_port: int, cycles: int) -> None:
    b1 = Backend("b1")
    port = free_port()
    check = (f'health_check = {{ interval = {INTERVAL}, timeout = {TIMEOUT}, rise = {RISE}, '
             f'fall = {FALL} }}')
    s = Sozu(tmp, http_apps_config(tmp, port, {"app": {
        "fronts": [("localhost", "")],
        "backends": [{"address": f"127.0.0.1:{b1.port}", "backend_id": "b1"},
                     {"address": f"127.0.0.1:{nginx_port}", "backend_id": "b2"}],
        "extra": check}}, worker_count=2).replace('log_access_target = "stdout"', 'log_access_target = "off"'),
        name="timing")
    results: dict[str, list[float]] = {"stopped: out": [], "restarted: back": [], "hung: out": [],
                                       "healed: back": []}
    try:
        s.start()
        b1_port = b1.port
        for _ in range(cycles):
            until(s, "b1", True, time.monotonic())
            time.sleep(INTERVAL * 1.37)  # land the failure anywhere within an interval
            started = time.monotonic()
            b1.stop()
            b1.close_connections()
            results["stopped: out"].append(until(s, "b1", False, started))
            time.sleep(random.uniform(0, INTERVAL))  # back anywhere within an interval
            started = time.monotonic()
            b1 = Backend("b1", port=b1_port)
            results["restarted: back"].append(until(s, "b1", True, started))
            time.sleep(INTERVAL * 0.61)
            b1.stop()
            b1.close_connections()
            hang = Hang(b1_port)
            started = time.monotonic()
            results["hung: out"].append(until(s, "b1", False, started))
            hang.stop()
            started = time.monotonic()
            b1 = Backend("b1", port=b1_port)
            results["healed: back"].append(until(s, "b1", True, started))
    finally:
        s.stop()
        b1.stop()
    out_bound, back_bound = FALL * INTERVAL + TIMEOUT, RISE * INTERVAL
    print(f"\n## Health timing (interval {INTERVAL}s, timeout {TIMEOUT}s, rise {RISE}, fall {FALL}; "
          f"{cycles} cycles; polled every 10 ms in the master and both workers)\n")
    print("| event | bound | min | median | max |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        bound = out_bound if name.endswith("out") else back_bound
        print(f"| {name} | {bound:.2f} s | {min(values):.3f} s | {statistics.median(values):.3f} s | "
              f"{max(values):.3f} s |")
    # Stopped: refused at once, the fall-th failed check ends it. Hung: the last check waits its
    # timeout. Back: the rise-th good check.


def wrk(port: int, duration: int, connections: int) -> float:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-H", "Host: localhost",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def checks_done(s: Sozu) -> int:
    rows = s.order("QUERY", {"type": "BACKENDS"})["data"]["master"]
    return sum(row.get("check", {}).get("checks", 0) for row in rows)


def throughput(tmp: Path, nginx_port: int, rounds: int, duration: int, connections: int) -> None:
    port = free_port()
    apps = {"web": {"fronts": [("localhost", "")], "backends": [f"127.0.0.1:{nginx_port}"]}}
    base = http_apps_config(tmp, port, apps, worker_count=2).replace(
        'log_access_target = "stdout"', 'log_access_target = "off"').replace(
        "max_connections = 500", "max_connections = 2000")
    unchecked = base + f"""
[applications.checked]
protocol = "http"
frontends = []
backends = [ {", ".join(f'{{ address = "127.0.0.1:{nginx_port}", backend_id = "c{i}" }}' for i in range(500))} ]
"""
    checked = unchecked + "health_check = { interval = 1, timeout = 0.5 }\n"
    configurations = {"no checks": base, "500 more backends, unchecked": unchecked,
                      "500 backends checked every second": checked}
    figures: dict[str, list[float]] = {name: [] for name in configurations}
    master_cpu: dict[str, list[float]] = {name: [] for name in figures}
    rates: list[float] = []
    for round_ in range(rounds):
        for name, text in configurations.items():
            s = Sozu(tmp, text, name=f"tp-{round_}-{len(figures[name])}-{name[:2]}")
            try:
                s.start()
                if "checked every" in name:
                    wait_for(lambda: checks_done(s) >= 500, 10, what="a first check of every backend")
                wrk(port, 1, connections)  # warm-up
                before_checks, before_cpu, started = (checks_done(s), cpu_seconds(s.process.pid),
                                                      time.monotonic())
                figures[name].append(wrk(port, duration, connections))
                elapsed = time.monotonic() - started
                master_cpu[name].append((cpu_seconds(s.process.pid) - before_cpu) / elapsed)
                if "checked every" in name:
                    rates.append((checks_done(s) - before_checks) / elapsed)
            finally:
                s.stop()
    print(f"\n## Small-request throughput (wrk -t1 -c{connections}, {duration} s, 2 workers, "
          f"nginx backend; {rounds} alternating rounds)\n")
    print("| configuration | requests/s (median) | each round | master CPU |")
    print("|---|---|---|---|")
    for name, values in figures.items():
        print(f"| {name} | {statistics.median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} | "
              f"{100 * statistics.median(master_cpu[name]):.1f}% of a core |")
    # Paired by round (the configurations of one round ran back to back): the neighbours'
    # load drifts less within a round than across rounds.
    paired = [c / n for c, n in zip(figures["500 backends checked every second"], figures["no checks"])]
    ratio = statistics.median(paired)
    print(f"\nwith checks / without, median of the rounds' ratios: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%); "
          f"rounds: {', '.join(f'{r:.2f}' for r in paired)}; checks done by the master: "
          f"{statistics.median(rates):.0f} per second")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--only", choices=("timing", "throughput"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sozu-health-bench-"))
    nginx, nginx_port = nginx_backend(tmp)
    try:
        if args.only != "throughput":
            timing(tmp, nginx_port, args.cycles)
        if args.only != "timing":
            throughput(tmp, nginx_port, args.rounds, args.duration, args.connections)
    finally:
        nginx.terminate()
        nginx.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
