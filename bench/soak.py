"""The long soak (`make soak`), with real processes, printing its figures:

1. 10 upgrades in a row while a keep-alive client, a new-connection-per-request client and a
   slow keep-alive client run: failed requests (must be 0), idle reconnects and retries (allowed,
   see tests/integration/load.py), per-upgrade times, `state dump` before == after, the pid file
   following the master. Then an upgrade whose new master is frozen (SIGSTOP): ERROR after the
   ready deadline, the old generation still serving.
2. slowhttptest holding 1,000 slow connections (slowloris, then slow read) against ONE worker
   while a normal client runs: its success rate (must be >= 99%) and latency.
3. An over-limit flood of 10x max_connections against full workers: every attempt refused
   (503), how fast, the workers' RSS sampled all along (must stay flat), and the latency of the
   connections that were open before.
4. The fault soak (bench/soak_faults.py): mixed load for --duration while runtime changes,
   SIGKILLed workers, killed backends, upgrades and floods happen; a text report and a PNG plot
   in --report.

Usage: .venv/bin/python bench/soak.py [--quick] [--only PART] [--duration 30m] [--report DIR]
(--quick: fewer upgrades, shorter runs of parts 1-3)
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
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

from tests.integration.harness import Backend, Sozu, free_port, http_config, wait_for  # noqa: E402
from tests.integration.load import Load, LoadClient, alive, rss_kib  # noqa: E402

FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        FAILURES.append(what)


def percentile(values, p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def master_pid(s: Sozu) -> int:
    answer = s.command({"id": "m", "version": 0, "type": "LIST_WORKERS"}, timeout=5)
    return next(w["pid"] for w in answer["data"]["workers"] if w["id"] == "master")


def dump(s: Sozu) -> dict:
    return s.command({"id": "d", "version": 0, "type": "DUMP_STATE"})["data"]


def start(directory: Path, text: str) -> Sozu:
    directory.mkdir(parents=True, exist_ok=True)
    return Sozu(directory, text).start()


# -- 1. upgrades under load ----------------------------------------------------------------------
def soak_upgrades(base: Path, upgrades: int) -> None:
    print(f"\n== 1. {upgrades} upgrades in a row under load")
    b1, b2 = Backend("b1"), Backend("b2")
    port = free_port()
    directory = base / "upgrades"
    text = http_config(directory, port, [b1.port], extra=f'pid_file_path = "{directory}/sozu.pid"')
    s = start(directory, text)
    try:
        for kind, data in [  # runtime changes, which the TOML file does not know
            ("ADD_APPLICATION", {"app_id": "app2", "load_balancing_policy": "RoundRobin"}),
            ("ADD_HTTP_FRONT", {"app_id": "app2", "address": f"127.0.0.1:{port}", "hostname": "two.example"}),
            ("ADD_BACKEND", {"app_id": "app2", "backend_id": "two-0", "address": f"127.0.0.1:{b2.port}"}),
        ]:
            assert s.order(kind, data)["status"] == "OK"
        before = dump(s)
        first = master = master_pid(s)
        times, drains = [], []
        clients = (LoadClient(port, name="keep-alive"),
                   LoadClient(port, keep_alive=False, name="new-connection"),
                   LoadClient(port, host="two.example", paths=("/slow/0.2",), name="slow keep-alive"))
        pid_file_ok = group_ok = True
        with Load(*clients) as load:
            time.sleep(1)
            for _ in range(upgrades):
                t = time.monotonic()
                out = s.ctl("--timeout=40000", "upgrade")
                if out.returncode != 0:
                    check(False, f"upgrade answered: {out.stdout.strip()} {out.stderr.strip()}")
                    break
                times.append(time.monotonic() - t)
                new = master_pid(s)
                wait_for(lambda: not alive(master), 30, what="the old master to exit")
                drains.append(time.monotonic() - t)
                pid_file_ok &= int((directory / "sozu.pid").read_text()) == new
                group_ok &= os.getpgid(new) == first
                master = new
                time.sleep(1)
        after = dump(s)
        total = load.ok + len(load.failures)
        print(f"  requests: {total} ({load.summary()})")
        for client in clients:
            print(f"  {client.name}: latency p50 {ms(percentile(client.latencies, .5))}, "
                  f"p99 {ms(percentile(client.latencies, .99))}, max {ms(max(client.latencies))}")
        print(f"  upgrade answered OK after: mean {ms(statistics.mean(times))}, max {ms(max(times))}; "
              f"old master gone after: mean {ms(statistics.mean(drains))}, max {ms(max(drains))}")
        for failure in load.failures[:10]:
            print(f"    failure: {failure}")
        check(len(times) == upgrades, f"{len(times)}/{upgrades} upgrades succeeded")
        check(not load.failures, f"{len(load.failures)} failed requests out of {total}")
        check(after == before, "state dump identical before and after")
        check(pid_file_ok, "the pid file followed the master every time")
        check(group_ok, "every master in the first master's process group")

        print("  -- an upgrade whose new master never gets ready (SIGSTOP)")
        frozen = {}

        workers_before = {w["pid"] for w in s.workers()}

        def freeze():  # the old master's new child that is not one of its workers
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "pid" not in frozen:
                for pid in set(_children(master)) - workers_before:
                    if _cmdline(pid).endswith(" start -c " + str(s.config_path)):
                        os.kill(pid, signal.SIGSTOP)
                        frozen["pid"] = pid
                        break
                time.sleep(0.002)

        freezer = threading.Thread(target=freeze)
        freezer.start()
        t = time.monotonic()
        answer = s.command({"id": "u", "version": 0, "type": "UPGRADE_MASTER"}, timeout=60)
        freezer.join()
        waited = time.monotonic() - t
        print(f"  answer after {waited:.1f} s: {answer['status']} {answer['message']}")
        check(answer["status"] == "ERROR" and "not ready within" in answer["message"],
              "a new master that is not ready in time fails the upgrade, with the reason")
        check(master_pid(s) == master and {w["pid"] for w in s.workers()} == workers_before,
              "the old generation goes on serving")
        check("pid" in frozen and not alive(frozen["pid"]), "the frozen new master was killed")
        check(_get(port, host="localhost")[0] == 200, "requests still served")
    finally:
        s.stop()
        b1.stop()
        b2.stop()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _get(port: int, host: str = "127.0.0.1", path: str = "/"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- 2. slowhttptest -----------------------------------------------------------------------------
def soak_slowhttptest(base: Path, length: int) -> None:
    print("\n== 2. slowhttptest: 1,000 slow connections against one worker")
    if not shutil.which("slowhttptest"):
        check(False, "slowhttptest is installed (apt-get install slowhttptest)")
        return
    backend = Backend("b1")
    port = free_port()
    directory = base / "slow"
    text = http_config(directory, port, [backend.port], worker_count=1, hostname="127.0.0.1")
    text = (text.replace("max_connections = 500", "max_connections = 4000")
            .replace("request_timeout = 3", "request_timeout = 10")
            .replace("front_timeout = 10", "front_timeout = 30")
            .replace('log_access_target = "stdout"', 'log_access_target = "off"'))
    s = start(directory, text)
    url = f"http://127.0.0.1:{port}"
    modes = [
        ("slowloris (-H)", ["-H", "-i", "5", "-x", "24"], "/"),
        ("slow read (-X)", ["-X", "-w", "512", "-y", "1024", "-n", "5", "-z", "32", "-k", "3"], "/size/1000000"),
    ]
    try:
        for name, options, path in modes:
            command = ["slowhttptest", *options, "-c", "1000", "-r", "500", "-l", str(length), "-p", "3",
                       "-u", url + path]
            held = []
            sampler_stop = threading.Event()

            def sample():
                while not sampler_stop.is_set():
                    answer = s.order("METRICS", None)
                    held.append(answer["data"]["workers"]["0"].get("active_connections", 0))
                    time.sleep(0.5)

            attack = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(4)  # let it open its connections
            sampler = threading.Thread(target=sample)
            sampler.start()
            clients = (LoadClient(port, host="127.0.0.1", name="keep-alive"),
                       LoadClient(port, host="127.0.0.1", keep_alive=False, name="new-connection"))
            with Load(*clients) as load:
                attack.wait(length + 60)
            sampler_stop.set()
            sampler.join()
            output = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", attack.stdout.read())  # no colours
            total = load.ok + len(load.failures)
            rate = 100.0 * load.ok / total if total else 0.0
            latencies = [x for c in clients for x in c.latencies]
            connected = [int(x) for x in re.findall(r"connected:\s+(\d+)", output)]
            unavailable = output.count("service available:   NO")
            ended = re.findall(r"Exit status:\s*(.*)", output)
            print(f"  {name}: slowhttptest held at most {max(connected, default=0)} connections, its "
                  f"probe found the service unavailable {unavailable} times, exit status: "
                  f"{ended[-1].strip() if ended else '?'}; the worker held at most "
                  f"{max(held, default=0)} open connections")
            print(f"    normal client: {total} requests, {rate:.2f}% success, latency p50 "
                  f"{ms(percentile(latencies, .5))}, p99 {ms(percentile(latencies, .99))}")
            for failure in load.failures[:5]:
                print(f"    failure: {failure}")
            check(max(connected, default=0) >= 900, f"{name}: slowhttptest held ~1,000 connections")
            check(rate >= 99.0, f"{name}: normal client success {rate:.2f}% >= 99%")
    finally:
        s.stop()
        backend.stop()


# -- 3. over-limit flood -------------------------------------------------------------------------
def soak_flood(base: Path, limit: int, factor: int) -> None:
    workers = 2
    attempts = factor * limit * workers
    print(f"\n== 3. over-limit flood: {attempts} connection attempts (10x) against {workers} full workers "
          f"of max_connections = {limit}")
    backend = Backend("b1")
    port = free_port()
    directory = base / "flood"
    text = http_config(directory, port, [backend.port], worker_count=workers)
    text = (text.replace("max_connections = 500", f"max_connections = {limit}")
            .replace("front_timeout = 10", "front_timeout = 120")
            .replace('log_access_target = "stdout"', 'log_access_target = "off"'))
    s = start(directory, text)
    try:
        opened = []
        for _ in range(limit * workers):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/", headers={"Host": "localhost"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
            opened.append(conn)
        pids = {w["pid"]: f"worker {w['id']}" for w in s.workers()}
        pids[master_pid(s)] = "master"
        rss = {pid: [] for pid in pids}
        stop = threading.Event()

        def sample_rss():
            while not stop.is_set():
                for pid in pids:
                    rss[pid].append(rss_kib(pid))
                time.sleep(0.1)

        open_latencies = []

        def use_open_connections():
            while not stop.is_set():
                for conn in opened[:50]:
                    t = time.monotonic()
                    conn.request("GET", "/", headers={"Host": "localhost"})
                    response = conn.getresponse()
                    response.read()
                    open_latencies.append(time.monotonic() - t)
                    if stop.is_set():
                        return

        results, lock = [], threading.Lock()

        def flood(n):
            for _ in range(n):
                t = time.monotonic()
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                        data = b""
                        while chunk := sock.recv(65536):
                            data += chunk
                    status = data[9:12].decode() or "closed"
                except OSError as error:
                    status = type(error).__name__
                with lock:
                    results.append((time.monotonic() - t, status))

        helpers = [threading.Thread(target=sample_rss), threading.Thread(target=use_open_connections)]
        for thread in helpers:
            thread.start()
        time.sleep(1)
        t = time.monotonic()
        threads = [threading.Thread(target=flood, args=(attempts // 50,)) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        flood_time = time.monotonic() - t
        time.sleep(1)
        stop.set()
        for thread in helpers:
            thread.join()
        statuses = {}
        for _, status in results:
            statuses[status] = statuses.get(status, 0) + 1
        durations = [d for d, _ in results]
        print(f"  {len(results)} attempts in {flood_time:.1f} s ({len(results) / flood_time:.0f}/s): {statuses}")
        print(f"  time to the refusal: p50 {ms(percentile(durations, .5))}, p99 {ms(percentile(durations, .99))}, "
              f"max {ms(max(durations))}")
        for pid, name in pids.items():
            series = rss[pid]
            print(f"  RSS {name}: first {series[0] / 1024:.1f} MiB, min {min(series) / 1024:.1f}, "
                  f"max {max(series) / 1024:.1f}, last {series[-1] / 1024:.1f} MiB ({len(series)} samples)")
        print(f"  open connections meanwhile: {len(open_latencies)} requests, p50 "
              f"{ms(percentile(open_latencies, .5))}, p99 {ms(percentile(open_latencies, .99))}")
        metrics = s.order("METRICS", None)["data"]["workers"]
        refused = sum(m.get("refused_connections", 0) for m in metrics.values())
        active = sorted(m.get("active_connections") for m in metrics.values())
        print(f"  workers: refused_connections {refused}, active_connections {active}")
        check(statuses.get("503", 0) == attempts, f"every attempt answered 503 ({statuses})")
        check(max(durations) < 1.0, f"refused within 1 s (max {ms(max(durations))})")
        growth = max(max(rss[pid]) - rss[pid][0] for pid in pids) / 1024
        check(growth < 5, f"RSS flat: largest growth {growth:.1f} MiB")
        check(active == [limit] * workers, "no pool slot taken by a refused connection")
        check(percentile(open_latencies, .99) < 0.1, "open connections at normal latency")
        for conn in opened:
            conn.close()
    finally:
        s.stop()
        backend.stop()


def duration(text: str) -> float:
    """`30m`, `90s`, `1h` or seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (30m, 90s, 1h)") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 upgrades, 15 s slowhttptest runs")
    parser.add_argument("--only", choices=("upgrades", "slow", "flood", "faults"), action="append",
                        help="run only this part (repeatable)")
    parser.add_argument("--duration", type=duration, default=1800.0,
                        help="length of the fault soak (default 30m)")
    parser.add_argument("--report", type=Path, default=ROOT / "bench" / "out-soak",
                        help="directory of the fault soak's report and plot")
    args = parser.parse_args()
    only = set(args.only or ("upgrades", "slow", "flood", "faults"))
    base = Path(tempfile.mkdtemp(prefix="sozu-soak-"))
    started = time.monotonic()
    try:
        if "upgrades" in only:
            soak_upgrades(base, 3 if args.quick else 10)
        if "slow" in only:
            soak_slowhttptest(base, 15 if args.quick else 30)
        if "flood" in only:
            soak_flood(base, limit=200, factor=10)
        if "faults" in only:
            import soak_faults
            FAILURES.extend(soak_faults.run(base, args.duration, args.report))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nsoak: {len(FAILURES)} failed checks in {time.monotonic() - started:.0f} s")
    for failure in FAILURES:
        print(f"  FAIL {failure}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
