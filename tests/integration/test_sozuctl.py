"""sozuctl against a real proxy: every sozuctl command with Sozu's
short flags, human tables and --json, exit status 0 / 1 / 2, and never a traceback."""
from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.integration.harness import (
    Sozu,
    free_port,
    http_config,
    on_each_worker,
    running_proxy,
    wait_for,
)
from tests.integration.harness import (
    routed_to as get,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "config"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, backends):
    with running_proxy(tmp_path_factory.mktemp("sozuctl"), backends[0].port) as s:
        yield s


def ctl(proxy, *args: str, code: int = 0):
    out = proxy.ctl(*args)
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    assert out.returncode == code, (args, out.returncode, out.stdout, out.stderr)
    return out


def ctl_json(proxy, *args: str, code: int = 0) -> dict:
    return json.loads(ctl(proxy, "--json", *args, code=code).stdout)  # one JSON document


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


# -- status, metrics, logging ---------------------------------------------------------------------

def test_status(proxy):
    rows = table(ctl(proxy, "status").stdout)
    assert rows[0][:4] == ["ID", "PID", "STATE", "RESTARTS"]
    workers = proxy.workers()
    assert [r[0] for r in rows[1:]] == ["master", "0", "1"]
    assert [int(r[1]) for r in rows[2:]] == [w["pid"] for w in workers]
    assert int(rows[1][1]) == proxy.process.pid
    assert [r[2:4] for r in rows[1:]] == [["running", "0"]] * 3
    answer = ctl_json(proxy, "status")
    assert answer["status"] == "OK"
    assert [w["id"] for w in answer["data"]["workers"]] == ["master", 0, 1]


def test_metrics(proxy, backends):
    rows = {r[0]: r[1:] for r in table(ctl(proxy, "metrics").stdout)}
    assert rows["requests"] == ["0", "0", "0"]  # before any request: there, at zero
    statuses = [get(proxy.port, "localhost")[0] for _ in range(8)] + [get(proxy.port, "nowhere")[0]]
    assert statuses == [200] * 8 + [404]
    counters, per_backend = ctl(proxy, "metrics").stdout.split("\n\n")
    rows = {r[0]: r[1:] for r in table(counters)}
    assert rows["METRIC"] == ["WORKER", "0", "WORKER", "1", "TOTAL"]
    by_backend = {(r[0], r[1]): r[2:] for r in table(per_backend)}
    assert by_backend[("app", f"127.0.0.1:{backends[0].port}")][:2] == ["8", "8"]  # requests, 2xx
    assert by_backend[("-", "-")][3] == "1"  # the 404 reached no application
    for name in ("requests", "status_2xx", "status_4xx", "bytes_in", "bytes_out", "active_connections",
                 "backend_connect_errors", "p50_ms", "p99_ms"):
        assert name in rows, name
    requests = [int(v) for v in rows["requests"]]
    assert requests[0] + requests[1] == requests[2] >= 9
    assert int(rows["status_4xx"][2]) >= 1
    data = ctl_json(proxy, "metrics")["data"]
    assert set(data["workers"]) == {"0", "1"}
    assert data["total"]["requests"] >= 9 and data["total"]["p50_ms"] is not None


def debug_tags(log: str) -> set[str]:
    """Processes (MASTER, WRK-0, ...) that wrote a DEBUG line."""
    return {line.split()[2] for line in log.splitlines() if len(line.split()) > 3 and line.split()[1] == "DEBUG"}


def test_logging_changes_master_and_workers_at_once(proxy):
    assert debug_tags(proxy.log()) == set()
    out = ctl(proxy, "logging", "--level=debug")
    assert out.stdout.strip() == "OK: LOGGING applied by 2 workers"
    assert "log filter set to 'debug'" in proxy.log()

    on_each_worker(proxy, lambda: get(proxy.port, "nobody.example"))  # a 404 is logged at debug
    wait_for(lambda: {"WRK-0", "WRK-1"} <= debug_tags(proxy.log()), 10, what="both workers to log at debug")
    ctl(proxy, "logging", "--level=info,sozu.http=warn")
    mark = len(proxy.log())
    for _ in range(10):
        get(proxy.port, "nobody.example")
    time.sleep(0.2)
    assert debug_tags(proxy.log()[mark:]) == set()
    out = ctl(proxy, "logging", "--level=info,sozu.http=lound", code=1)
    assert "unknown log level 'lound'" in out.stderr
    ctl(proxy, "logging", "--level=info")


# -- applications, backends, frontends, queries -----------------------------------------------------

def test_applications_backends_frontends_and_queries(proxy, backends):
    b1, b2 = backends
    ctl(proxy, "application", "add", "-i", "shop", "--sticky-session", "--load-balancing-policy=leastconnections")
    ctl(proxy, "backend", "add", "-i", "shop", "--backend-id=s2", "-a", f"127.0.0.1:{b2.port}", "--weight=50",
        "--sticky-id=abc")
    ctl(proxy, "frontend", "http", "add", "-i", "shop", "-a", proxy.address, "--hostname=shop.example",
        "--path=/cart")
    assert get(proxy.port, "shop.example", "/cart/1") == (200, "b2")
    assert get(proxy.port, "shop.example", "/") == (404, None)

    out = ctl(proxy, "query", "applications", "-i", "shop").stdout
    rows = table(out)
    assert rows[0] == ["APPLICATION", "KIND", "ADDRESS", "ROUTE", "/", "BACKEND", "SETTINGS"]
    assert ["shop", "application", "LeastConnections", "sticky"] in rows
    assert ["shop", "http", "frontend", proxy.address, "shop.example/cart"] in rows
    assert ["shop", "backend", f"127.0.0.1:{b2.port}", "s2", "weight=50", "sticky_id=abc"] in rows
    assert out.strip().endswith("(master, worker 0, worker 1 agree)")
    out = ctl(proxy, "query", "applications", "--domain=shop.example/cart/x").stdout
    assert "shop.example/cart" in out and "(master, worker 0, worker 1 agree)" in out
    assert "no application" in ctl(proxy, "query", "applications", "--domain=shop.example/other").stdout
    everything = ctl_json(proxy, "query", "applications")["data"]
    assert everything["workers"]["0"] == everything["workers"]["1"] == everything["master"]
    assert {a["app_id"] for a in everything["master"]} >= {"app", "shop"}

    out = ctl(proxy, "backend", "remove", "-i", "shop", "--backend-id=nope", "-a", f"127.0.0.1:{b2.port}", code=1)
    assert out.stderr.strip() == f"ERROR: no backend nope at 127.0.0.1:{b2.port} in application shop"
    answer = ctl_json(proxy, "application", "remove", "-i", "ghost", code=1)
    assert answer["status"] == "ERROR" and answer["message"] == "no application ghost"

    ctl(proxy, "frontend", "http", "remove", "-i", "shop", "-a", proxy.address, "--hostname=shop.example",
        "--path=/cart")
    assert get(proxy.port, "shop.example", "/cart/1")[0] == 404
    ctl(proxy, "backend", "remove", "-i", "shop", "--backend-id=s2", "-a", f"127.0.0.1:{b2.port}")
    ctl(proxy, "application", "remove", "-i", "shop")
    assert "shop" not in ctl(proxy, "query", "applications").stdout


def test_listeners_certificates_and_https_tcp_frontends(proxy, backends):
    http_port, https_port, tcp_port = free_port(), free_port(), free_port()
    http_address, https_address, tcp_address = (f"127.0.0.1:{p}" for p in (http_port, https_port, tcp_port))
    ctl(proxy, "listener", "http", "add", "-a", http_address, "--front-timeout=20")
    ctl(proxy, "listener", "http", "activate", "-a", http_address)
    ctl(proxy, "frontend", "http", "add", "-i", "app", "-a", http_address, "--hostname=new.example")
    assert get(http_port, "new.example") == (200, "b1")
    ctl(proxy, "listener", "http", "deactivate", "-a", http_address)
    ctl(proxy, "listener", "http", "remove", "-a", http_address)
    out = ctl(proxy, "listener", "http", "remove", "-a", http_address, code=1)
    assert out.stderr.strip() == f"ERROR: no http listener at {http_address}"

    ctl(proxy, "listener", "https", "add", "-a", https_address, "--tls-versions=TLSv1.2,TLSv1.3")
    ctl(proxy, "certificate", "add", "-a", https_address, f"--certificate={DATA / 'cert.pem'}",
        f"--key={DATA / 'key.pem'}", f"--certificate-chain={DATA / 'ca.pem'}")
    ctl(proxy, "certificate", "replace", "-a", https_address, f"--new-certificate={DATA / 'other.pem'}",
        f"--new-key={DATA / 'other-key.pem'}", f"--old-certificate={DATA / 'cert.pem'}")
    dump = ctl_json(proxy, "state", "dump")["data"]
    [certificate] = [c for c in dump["certificates"] if c["address"] == https_address]
    ctl(proxy, "frontend", "https", "add", "-i", "app", "-a", https_address, "--hostname=other.example.org")
    ctl(proxy, "frontend", "https", "remove", "-i", "app", "-a", https_address, "--hostname=other.example.org")
    ctl(proxy, "certificate", "remove", "-a", https_address, f"--fingerprint={certificate['fingerprint']}")
    ctl(proxy, "listener", "https", "remove", "-a", https_address)

    ctl(proxy, "listener", "tcp", "add", "-a", tcp_address)
    ctl(proxy, "listener", "tcp", "activate", "-a", tcp_address)
    ctl(proxy, "application", "add", "-i", "tcpapp")
    ctl(proxy, "backend", "add", "-i", "tcpapp", "--backend-id=t", "-a", f"127.0.0.1:{backends[1].port}")
    ctl(proxy, "frontend", "tcp", "add", "-i", "tcpapp", "-a", tcp_address)
    assert get(tcp_port, "whatever") == (200, "b2")
    ctl(proxy, "frontend", "tcp", "remove", "-i", "tcpapp", "-a", tcp_address)
    ctl(proxy, "listener", "tcp", "remove", "-a", tcp_address)
    ctl(proxy, "application", "remove", "-i", "tcpapp")
    listeners = [l["address"] for l in ctl_json(proxy, "state", "dump")["data"]["listeners"]]
    assert listeners == [proxy.address]


def test_state_save_dump_and_load(proxy, tmp_path):
    path = tmp_path / "state.json"
    out = ctl(proxy, "state", "save", "-f", str(path))
    assert out.stdout.startswith("OK: saved ") and str(path) in out.stdout
    dump = ctl(proxy, "state", "dump").stdout
    assert dump.startswith("Listeners:\nPROTOCOL  ADDRESS")
    assert "Applications:\n" in dump and "Certificates:\n(none)" in dump
    ctl(proxy, "application", "add", "-i", "temporary")
    out = ctl(proxy, "state", "load", "--file", str(path))
    assert out.stdout.strip() == f"OK: loaded {path}: 1 orders (the difference) applied by 2 workers"
    assert ctl(proxy, "state", "load", "-f", str(path)).stdout.strip() == \
        f"OK: the state is already the one in {path}"
    out = ctl(proxy, "state", "load", "-f", str(tmp_path / "absent.json"), code=1)
    assert "cannot read the state file" in out.stderr and "absent.json" in out.stderr


def test_routing_follows_sozuctl_changes_under_keep_alive_load(proxy, backends):
    b1, b2 = backends
    failures, counts, running = [], {}, [True]

    def load():
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        while running[0]:
            try:
                conn.request("GET", "/", headers={"Host": "localhost"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(response.status)
                name = response.getheader("X-Backend")
                counts[name] = counts.get(name, 0) + 1
            except Exception as error:  # noqa: BLE001 - every error is a failed request
                failures.append(repr(error))
                conn.close()
        conn.close()
    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(4):
            ctl(proxy, "backend", "add", "-i", "app", "--backend-id=extra", "-a", f"127.0.0.1:{b2.port}")
            wait_for(lambda: "b2" in {get(proxy.port, "localhost")[1] for _ in range(4)}, 2,
                     what="b2 to be routed to")
            ctl(proxy, "backend", "remove", "-i", "app", "--backend-id=extra", "-a", f"127.0.0.1:{b2.port}")
            assert {get(proxy.port, "localhost")[1] for _ in range(8)} == {"b1"}
    finally:
        running[0] = False
        for t in threads:
            t.join(5)
    assert failures == []
    assert counts.get("b1", 0) > 0 and counts.get("b2", 0) > 0, counts


# -- what goes wrong -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["backend", "add", "-i", "x"], "invalid command line; usage:\n  sozuctl [options] backend add"),
    (["frontend", "http", "add", "-i", "a", "-a", "127.0.0.1:80"], "invalid command line"),
    (["backend", "add", "-i", "a", "--backend-id=b", "-a", "127.0.0.1:1", "--weight=heavy"],
     "--weight expects a whole number, not 'heavy'"),
    (["application", "add", "-i", "a", "--load-balancing-policy=fastest"], "--load-balancing-policy must be"),
    (["backend", "add", "-i", "a", "--backend-id=b", "-a", "localhost:80"], "IP:PORT"),
    (["certificate", "add", "-a", "127.0.0.1:1", "--certificate=/nonexistent.pem", "--key=/k.pem"],
     "cannot read the certificate file /nonexistent.pem"),
    (["frobnicate"], "invalid command line"),
])
def test_bad_command_lines_exit_1_with_a_message(proxy, args, expected):
    out = ctl(proxy, *args, code=1)
    assert expected in out.stderr
    assert out.stdout == ""


def test_config_check(proxy, tmp_path):
    assert ctl(proxy, "config", "check").stdout.startswith(f"OK: {proxy.config_path}: 1 listener")
    bad = tmp_path / "bad.toml"
    bad.write_text('command_socket = "./s.sock"\nworker_cont = 2\n')
    out = Sozu(tmp_path, bad.read_text(), name="bad").ctl("config", "check")
    assert out.returncode == 1 and "worker_cont" in out.stderr and "Traceback" not in out.stderr


def test_unreachable_or_silent_proxy_exits_2(proxy, tmp_path):
    elsewhere = Sozu(tmp_path, http_config(tmp_path, free_port(), [free_port()]), name="elsewhere")
    out = elsewhere.ctl("status")
    assert out.returncode == 2 and f"cannot reach the proxy at {tmp_path / 'sozu.sock'}" in out.stderr
    assert "Traceback" not in out.stderr
    os.kill(proxy.process.pid, signal.SIGSTOP)
    try:
        out = ctl(proxy, "--timeout=300", "status", code=2)
    finally:
        os.kill(proxy.process.pid, signal.SIGCONT)
    assert out.stderr.strip() == f"sozuctl: no answer from the proxy at {proxy.socket_path} within 300 ms"
    ctl(proxy, "status")


def test_upgrade_one_worker(proxy):
    before = {w["id"]: w for w in proxy.workers()}
    out = ctl(proxy, "upgrade", "--worker=0")
    assert "worker 0 upgraded" in out.stdout
    wait_for(lambda: [w["id"] for w in proxy.workers()] == [0, 1], 10, what="the old worker 0 to leave")
    after = {w["id"]: w for w in proxy.workers()}
    assert after[0]["pid"] != before[0]["pid"] and after[0]["restarts"] == before[0]["restarts"] + 1
    assert after[1] == before[1]
    assert "(master, worker 0, worker 1 agree)" in ctl(proxy, "query", "applications").stdout


def test_shutdown_one_worker_then_the_proxy(proxy):  # last: the module's proxy is gone after it
    ctl(proxy, "shutdown", "--worker=1")
    wait_for(lambda: [w["id"] for w in proxy.workers()] == [0], 10, what="worker 1 to stop")
    assert get(proxy.port, "localhost") == (200, "b1")
    ctl(proxy, "shutdown", "--hard")
    assert proxy.wait_exit(10) == 0
    out = ctl(proxy, "status", code=2)
    assert proxy.socket_path in out.stderr


def test_read_only_commands_need_only_the_command_socket_from_the_file(tmp_path, backends):
    """The proxy's own file, gone bad since it started: a certificate file that is garbage, one
    that is missing, a typo. `config check` says so; looking at the running proxy still works."""
    (tmp_path / "proxy").mkdir()
    with running_proxy(tmp_path / "proxy", backends[0].port) as proxy:
        check_with_a_broken_file(proxy, tmp_path)


def check_with_a_broken_file(proxy, tmp_path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    https_port = free_port()
    text = proxy.config_path.read_text().replace("worker_count =", "worker_cont = 3\nworker_count =", 1)
    text += f"""
[[listeners]]
protocol = "https"
address = "127.0.0.1:{https_port}"

[applications.broken]
protocol = "http"
frontends = [
  {{ address = "127.0.0.1:{https_port}", hostname = "a.test", certificate = "{garbage}", key = "{garbage}" }},
  {{ address = "127.0.0.1:{https_port}", hostname = "b.test", certificate = "{tmp_path}/gone.pem", key = "{tmp_path}/gone.key" }},
]
backends = [ "127.0.0.1:1" ]
"""
    broken = Sozu(tmp_path, text, name="broken")
    check = broken.ctl("config", "check")
    assert check.returncode == 1 and "worker_cont" in check.stderr
    for args in (["status"], ["metrics"], ["state", "dump"], ["query", "applications"],
                 ["--json", "status"]):
        out = broken.ctl(*args)
        assert out.returncode == 0 and "Traceback" not in out.stderr, (args, out.stderr)
    assert [row[0] for row in table(broken.ctl("status").stdout)[1:]] == ["master", "0", "1"]
    assert "broken" not in broken.ctl("state", "dump").stdout
