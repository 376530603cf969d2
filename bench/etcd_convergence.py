"""Convergence of several sozu instances following one etcd (docs/etcd.md), with real processes.

Three instances (two workers each, distinct ports, one machine: [provider.etcd] addresses maps
the listener named in etcd to each one's own) follow one prefix; a keep-alive load client runs
against every instance. Each of the CHANGES changes is one etcdctl-style put (a backend's
weight); its time is from the put (sent) to the moment every worker of every instance (and
every master) holds it, seen by QUERY on each command socket. Prints the p50, p99 and max, the
requests served and the failed ones (must be 0).

Usage: .venv/bin/python bench/etcd_convergence.py [--changes=N]   (default 1,000)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.etcd_server import EtcdServer  # noqa: E402
from tests.integration.harness import Backend, Sozu, free_port, http_config, wait_for  # noqa: E402
from tests.integration.load import Load, LoadClient  # noqa: E402

INSTANCES, PREFIX, SHARED = 3, "/sozu/", "0.0.0.0:80"


def percentile(values, p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def weights(proxy: Sozu) -> set:
    """The weights of backend b1 in the master and in each worker of one instance."""
    answer = proxy.order("QUERY", {"type": "APPLICATIONS", "data": {"type": "APP_ID", "data": "app"}})
    views = [answer["data"]["master"], *answer["data"]["workers"].values()]
    if len(views) != 3:
        return {None}
    return {b["load_balancing_parameters"]["weight"] for found in views for view in found
            for b in view["backends"] if b["backend_id"] == "b1"} or {None}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=1000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sozu-etcd-bench-"))
    etcd = EtcdServer(tmp).start()
    backend = Backend("b1")
    proxies: list[Sozu] = []
    try:
        for i in range(INSTANCES):
            port = free_port()
            directory = tmp / f"sozu{i}"
            directory.mkdir()
            text = http_config(directory, port, [backend.port], worker_count=2, extra=f"""
log_level = "warning"
log_access_target = "off"
[provider.etcd]
endpoints = ["{etcd.endpoint}"]
prefix = "{PREFIX}"
addresses = {{ "{SHARED}" = "127.0.0.1:{port}" }}
""").replace('log_level = "info"\nlog_access_target = "stdout"\n', "")
            proxy = Sozu(directory, text).start()
            proxy.port = port
            proxies.append(proxy)
        pushed = proxies[0].ctl("etcd", "push")
        assert pushed.returncode == 0, pushed.stderr
        key = f"{PREFIX}backends/app/0001-b1"
        value = {"type": "ADD_BACKEND", "data": {"app_id": "app", "backend_id": "b1",
                                                 "address": f"127.0.0.1:{backend.port}",
                                                 "load_balancing_parameters": {"weight": 0}}}
        etcd.put(key, value)
        wait_for(lambda: all(weights(p) == {0} for p in proxies), timeout=30,
                 what="every instance to follow etcd")
        times = []
        with Load(*(LoadClient(p.port) for p in proxies)) as load:
            for change in range(1, args.changes + 1):
                value["data"]["load_balancing_parameters"]["weight"] = change % 1000 + 1
                wanted = {change % 1000 + 1}
                start = time.monotonic()
                etcd.put(key, value)
                pending = set(range(INSTANCES))
                deadline = start + 10
                while pending and time.monotonic() < deadline:
                    pending = {i for i in pending if weights(proxies[i]) != wanted}
                if pending:
                    print(f"change {change}: not applied everywhere within 10 s")
                    return 1
                times.append(time.monotonic() - start)
            time.sleep(0.2)
        print(f"{args.changes} changes, {INSTANCES} instances x 2 workers (one shared machine: "
              "figures are indicative)")
        print(f"etcd write -> applied in every worker of every instance: "
              f"p50 {percentile(times, 0.5) * 1000:.1f} ms, p99 {percentile(times, 0.99) * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms")
        print(f"load during the changes: {load.ok} requests served, {len(load.failures)} failed "
              f"{load.failures[:5]}")
        return 0 if not load.failures and percentile(times, 0.99) < 1.0 else 1
    finally:
        for proxy in proxies:
            proxy.stop()
        backend.stop()
        etcd.stop()


if __name__ == "__main__":
    sys.exit(main())
