"""Every order of docs/orders.md, sent on the real command socket, checked where a user sees it:
in what the proxy serves, in the workers' answers, in the logs."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from sozu.metrics import percentiles
from tests.integration.harness import (
    Backend,
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


def ok(answer: dict) -> dict:
    assert answer["status"] == "OK", answer
    return answer


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, backends):
    with running_proxy(tmp_path_factory.mktemp("orders"), backends[0].port) as s:
        yield s


def backend_data(app_id: str, backend: Backend, **extra) -> dict:
    return {"app_id": app_id, "backend_id": backend.server.name,
            "address": f"127.0.0.1:{backend.port}", **extra}


def front(proxy, app_id: str, hostname: str, path_begin: str = "") -> dict:
    return {"app_id": app_id, "address": proxy.address, "hostname": hostname,
            "path_begin": path_begin}


def query(proxy, selector=None, **extra) -> dict:
    """The APPLICATIONS query; asserts the master and every worker give the same answer."""
    answer = ok(proxy.order("QUERY", {"type": "APPLICATIONS", "data": selector}, **extra))
    workers = answer["data"]["workers"]
    assert workers and all(view == answer["data"]["master"] for view in workers.values()), answer
    return answer["data"]["master"]


# -- applications, frontends, backends ----------------------------------------------------------

def test_applications_frontends_and_backends(proxy, backends):
    b1, b2 = backends
    ok(proxy.order("ADD_APPLICATION", {"app_id": "shop", "load_balancing_policy": "roundrobin"}))
    ok(proxy.order("ADD_BACKEND", backend_data("shop", b1)))
    ok(proxy.order("ADD_HTTP_FRONT", front(proxy, "shop", "shop.example")))
    ok(proxy.order("ADD_APPLICATION", {"app_id": "api"}))
    ok(proxy.order("ADD_BACKEND", backend_data("api", b2, load_balancing_parameters={"weight": 10})))
    ok(proxy.order("ADD_HTTP_FRONT", front(proxy, "api", "shop.example", "/api")))
    assert get(proxy.port, "shop.example", "/") == (200, "b1")
    assert get(proxy.port, "SHOP.example:80", "/api/v1") == (200, "b2")  # longest prefix wins
    # the same route to another application is refused; to the same one, a no-op
    answer = proxy.order("ADD_HTTP_FRONT", front(proxy, "api", "shop.example"))
    assert answer["status"] == "ERROR"
    assert answer["message"] == (f"http front shop.example on {proxy.address} already routes to "
                                 "application shop")
    ok(proxy.order("ADD_HTTP_FRONT", front(proxy, "shop", "shop.example")))
    # re-adding an application replaces its settings and keeps its fronts and backends
    ok(proxy.order("ADD_APPLICATION", {"app_id": "shop", "load_balancing_policy": "Random"}))
    [view] = query(proxy, {"type": "APP_ID", "data": "shop"})
    assert view["configuration"]["load_balancing_policy"] == "Random"
    assert [f["hostname"] for f in view["http_frontends"]] == ["shop.example"]
    assert [b["backend_id"] for b in view["backends"]] == ["b1"]
    # DOMAIN queries look at the host and the path
    assert [v["app_id"] for v in query(proxy, {"type": "DOMAIN", "data": {
        "hostname": "shop.example", "path_begin": "/api/x"}})] == ["api", "shop"]
    assert [v["app_id"] for v in query(proxy, {"type": "DOMAIN", "data": {
        "hostname": "shop.example", "path_begin": "/cart"}})] == ["shop"]
    assert query(proxy, {"type": "DOMAIN", "data": {"hostname": "other.example"}}) == []
    # a removed frontend stops routing at once
    ok(proxy.order("REMOVE_HTTP_FRONT", front(proxy, "api", "shop.example", "/api")))
    assert get(proxy.port, "shop.example", "/api/v1") == (200, "b1")
    answer = proxy.order("REMOVE_HTTP_FRONT", front(proxy, "api", "shop.example", "/api"))
    assert answer["status"] == "ERROR"
    assert answer["message"] == f"no http front shop.example/api on {proxy.address}"


def test_removing_an_application_makes_its_frontends_answer_404(proxy, backends):
    ok(proxy.order("ADD_APPLICATION", {"app_id": "gone"}))
    ok(proxy.order("ADD_BACKEND", backend_data("gone", backends[0])))
    ok(proxy.order("ADD_HTTP_FRONT", front(proxy, "gone", "gone.example")))
    kept = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    kept.request("GET", "/", headers={"Host": "gone.example"})
    assert kept.getresponse().read() and True
    ok(proxy.order("REMOVE_APPLICATION", "gone"))
    assert [get(proxy.port, "gone.example")[0] for _ in range(6)] == [404] * 6
    kept.request("GET", "/", headers={"Host": "gone.example"})  # an open keep-alive connection too
    response = kept.getresponse()
    response.read()
    assert response.status == 404
    kept.close()
    assert query(proxy, {"type": "APP_ID", "data": "gone"}) == []
    answer = proxy.order("REMOVE_APPLICATION", "gone")
    assert answer["status"] == "ERROR" and answer["message"] == "no application gone"


def test_a_backend_order_for_an_unknown_application_is_refused(proxy, backends):
    answer = proxy.order("ADD_BACKEND", backend_data("nowhere", backends[0]))
    assert answer["status"] == "ERROR" and answer["message"] == "no application nowhere"
    answer = proxy.order("ADD_APPLICATION", {"app_id": "x"}, worker_id=0)
    assert answer["status"] == "ERROR"
    assert "worker_id is not allowed" in answer["message"]


# -- listeners ----------------------------------------------------------------------------------

def access_lines(proxy, marker: str) -> set[str]:
    """The tags (WRK-0, WRK-1...) of the processes that logged an access line with marker."""
    return {line.split()[2] for line in proxy.log().splitlines() if " ACCESS " in line and marker in line}


def test_a_listener_added_at_runtime_is_served_by_every_worker(proxy, backends):
    port = free_port()
    address = f"127.0.0.1:{port}"
    ok(proxy.order("ADD_HTTP_LISTENER", {"front": address}))
    answer = proxy.order("ADD_HTTP_LISTENER", {"front": address})
    assert answer["status"] == "ERROR" and answer["message"] == f"a http listener already uses {address}"
    ok(proxy.order("ACTIVATE_LISTENER", {"front": address, "proxy": "HTTP"}))
    ok(proxy.order("ADD_HTTP_FRONT", {"app_id": "app", "address": address, "hostname": "listener.example"}))
    assert get(port, "listener.example", "/on-the-new-listener") == (200, "b1")

    assert on_each_worker(proxy, lambda: get(port, "listener.example", "/on-the-new-listener")) == [(200, "b1")] * 2
    wait_for(lambda: access_lines(proxy, "/on-the-new-listener") == {"WRK-0", "WRK-1"}, 5,
             what="both workers' access lines (each is written just after its answer)")

    # deactivated: the socket stays bound (connections wait in the backlog), nobody accepts
    ok(proxy.order("DEACTIVATE_LISTENER", {"front": address, "proxy": "HTTP"}))
    waiting = socket.create_connection(("127.0.0.1", port), timeout=0.5)
    waiting.sendall(b"GET /waited HTTP/1.1\r\nHost: listener.example\r\nConnection: close\r\n\r\n")
    with pytest.raises(socket.timeout):
        waiting.recv(100)
    ok(proxy.order("ACTIVATE_LISTENER", {"front": address, "proxy": "HTTP"}))
    waiting.settimeout(5)
    assert waiting.recv(100).startswith(b"HTTP/1.1 200")
    waiting.close()

    # removed: closed in the master and in every worker, its fronts gone, the port free again
    ok(proxy.order("REMOVE_LISTENER", {"front": address, "proxy": "HTTP"}))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not any(f["address"] == address for v in query(proxy) for f in v["http_frontends"])
    ok(proxy.order("ADD_HTTP_LISTENER", {"front": address}))
    ok(proxy.order("ACTIVATE_LISTENER", {"front": address, "proxy": "HTTP"}))
    ok(proxy.order("ADD_HTTP_FRONT", {"app_id": "app", "address": address, "hostname": "listener.example"}))
    assert get(port, "listener.example") == (200, "b1")
    ok(proxy.order("REMOVE_LISTENER", {"front": address, "proxy": "HTTP"}))


def test_a_listener_on_a_port_in_use_is_refused_and_leaves_nothing(proxy, backends):
    busy = backends[0].port
    before = ok(proxy.command({"id": "d", "version": 0, "type": "DUMP_STATE"}))["data"]
    answer = proxy.order("ADD_HTTP_LISTENER", {"front": f"127.0.0.1:{busy}"})
    assert answer["status"] == "ERROR"
    assert answer["message"] == f"cannot listen on 127.0.0.1:{busy}: Address already in use"
    answer = proxy.order("ACTIVATE_LISTENER", {"front": "127.0.0.1:9", "proxy": "HTTP"})
    assert answer["status"] == "ERROR" and answer["message"] == "no http listener at 127.0.0.1:9"
    assert ok(proxy.command({"id": "d", "version": 0, "type": "DUMP_STATE"}))["data"] == before


def test_https_frontends_and_certificates(proxy, backends):
    port = free_port()
    address = f"127.0.0.1:{port}"
    ok(proxy.order("ADD_HTTPS_LISTENER", {"front": address}))
    cert = {"certificate": (DATA / "cert.pem").read_text(), "key": (DATA / "key.pem").read_text(),
            "certificate_chain": [(DATA / "ca.pem").read_text()]}
    ok(proxy.order("ADD_CERTIFICATE", {"front": address, "certificate": cert}))
    ok(proxy.order("ACTIVATE_LISTENER", {"front": address, "proxy": "HTTPS"}))
    ok(proxy.order("ADD_APPLICATION", {"app_id": "secure"}))
    ok(proxy.order("ADD_BACKEND", backend_data("secure", backends[1])))
    https_front = {"app_id": "secure", "address": address, "hostname": "www.example.com"}
    ok(proxy.order("ADD_HTTPS_FRONT", https_front))
    answer = proxy.order("ADD_HTTP_FRONT", https_front)  # the wrong kind of listener
    assert answer["status"] == "ERROR"
    assert answer["message"] == f"the listener at {address} is https, not http"
    certificates = ok(proxy.order("QUERY", {"type": "CERTIFICATES"}))["data"]
    assert list(certificates["master"]) == [address]
    assert all(c == certificates["master"] for c in certificates["workers"].values())
    [view] = query(proxy, {"type": "APP_ID", "data": "secure"})
    assert view["https_frontends"] == [dict(https_front, path_begin="")]

    context = ssl.create_default_context(cafile=str(DATA / "ca.pem"))
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                             server_hostname="www.example.com") as tls:  # SNI, dialled by IP
        tls.sendall(b"GET /tls HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nX-Backend: b2\r\n" in answer
    assert "PRIVATE KEY" not in json.dumps(ok(proxy.command({"id": "d", "version": 0, "type": "DUMP_STATE"})))
    ok(proxy.order("REMOVE_HTTPS_FRONT", https_front))
    fingerprint = next(iter(certificates["master"][address]))
    ok(proxy.order("REMOVE_CERTIFICATE", {"front": address, "fingerprint": fingerprint}))
    ok(proxy.order("REMOVE_LISTENER", {"front": address, "proxy": "HTTPS"}))


def test_tcp_frontends(proxy, backends):
    port = free_port()
    address = f"127.0.0.1:{port}"
    ok(proxy.order("ADD_TCP_LISTENER", {"front": address}))
    ok(proxy.order("ACTIVATE_LISTENER", {"front": address, "proxy": "TCP"}))
    ok(proxy.order("ADD_APPLICATION", {"app_id": "raw"}))
    ok(proxy.order("ADD_BACKEND", backend_data("raw", backends[1])))
    ok(proxy.order("ADD_TCP_FRONT", {"app_id": "raw", "address": address}))
    answer = proxy.order("ADD_TCP_FRONT", {"app_id": "shop", "address": address})
    assert answer["status"] == "ERROR"
    assert answer["message"] == f"the tcp listener {address} already routes to application raw"
    # bytes relayed as they are: the backend sees exactly what was sent, no Sozu headers
    assert get(port, "anything") == (200, "b2")
    [view] = query(proxy, {"type": "APP_ID", "data": "raw"})
    assert view["tcp_frontends"] == [{"app_id": "raw", "address": address}]
    ok(proxy.order("REMOVE_TCP_FRONT", {"app_id": "raw", "address": address}))
    ok(proxy.order("REMOVE_LISTENER", {"front": address, "proxy": "TCP"}))
    answer = proxy.order("REMOVE_TCP_FRONT", {"app_id": "raw", "address": address})
    assert answer["status"] == "ERROR" and answer["message"] == f"no tcp front on {address}"


# -- what the workers report --------------------------------------------------------------------

def test_status_list_workers_and_query_hashes(proxy):
    status = ok(proxy.order("STATUS"))["data"]["workers"]
    listed = ok(proxy.command({"id": "l", "version": 0, "type": "LIST_WORKERS"}))["data"]["workers"]
    assert status == listed
    assert [w["id"] for w in listed] == ["master", 0, 1]
    assert all(set(w) >= {"id", "pid", "state", "restarts"} for w in listed)
    assert [w["state"] for w in listed] == ["running"] * 3
    answer = ok(proxy.order("QUERY", {"type": "APPLICATIONS_HASHES"}, worker_id=1))
    assert list(answer["data"]["workers"]) == ["1"]
    assert answer["data"]["workers"]["1"] == answer["data"]["master"]
    answer = proxy.order("STATUS", worker_id=7)
    assert answer["status"] == "ERROR" and answer["message"] == "no running worker with id 7"


def test_metrics_per_worker_and_total(proxy, backends):
    ok(proxy.order("METRICS", "CLEAR"))
    ok(proxy.order("ADD_APPLICATION", {"app_id": "dead"}))
    ok(proxy.order("ADD_BACKEND", {"app_id": "dead", "backend_id": "x", "address": f"127.0.0.1:{free_port()}"}))
    ok(proxy.order("ADD_HTTP_FRONT", front(proxy, "dead", "dead.example")))
    statuses = [get(proxy.port, "localhost")[0] for _ in range(10)]
    statuses += [get(proxy.port, "nobody.example")[0] for _ in range(3)]
    statuses += [get(proxy.port, "dead.example")[0]]
    assert statuses == [200] * 10 + [404] * 3 + [503]
    idle = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    idle.request("GET", "/", headers={"Host": "localhost"})
    idle.getresponse().read()  # kept open: an active connection

    def counted():
        data = ok(proxy.order("METRICS"))["data"]
        return data if data["total"].get("requests") == 15 else None
    data = wait_for(counted, 5, what="the last request to be counted")
    total, workers = data["total"], data["workers"]
    assert set(workers) == {"0", "1"}
    assert total["status_2xx"] == 11 and total["status_4xx"] == 3 and total["status_5xx"] == 1
    assert total["backend_connect_errors"] >= 1
    assert total["active_connections"] >= 1
    assert total["bytes_in"] > 0 and total["bytes_out"] > 0
    assert total["p50_ms"] is not None and total["p99.9_ms"] >= total["p50_ms"]
    for name in ("requests", "bytes_in", "bytes_out"):
        assert total[name] == sum(w.get(name, 0) for w in workers.values())
    idle.close()


def test_percentiles_stay_json():
    # a request slower than the last bucket bound: no infinity in the METRICS answer
    assert json.dumps(percentiles([0] * 15 + [3]), allow_nan=False)


def test_logging_order(proxy):
    answer = proxy.order("LOGGING", "info,sozu.http=lound")
    assert answer["status"] == "ERROR" and "unknown log level 'lound'" in answer["message"]
    assert ok(proxy.order("LOGGING", "info,sozu.http=debug"))["message"] == "LOGGING applied by 2 workers"
    ok(proxy.order("LOGGING", "info"))


def test_subscribed_client_hears_backend_down_up_and_no_backend(proxy):
    port = free_port()
    ok(proxy.order("ADD_APPLICATION", {"app_id": "flaky"}))
    ok(proxy.order("ADD_BACKEND", {"app_id": "flaky", "backend_id": "f1", "address": f"127.0.0.1:{port}"}))
    ok(proxy.order("ADD_HTTP_FRONT", front(proxy, "flaky", "flaky.example")))
    events: list[dict] = []
    sub = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sub.connect(proxy.socket_path)
    sub.sendall(json.dumps({"id": "sub", "version": 0, "type": "SUBSCRIBE_EVENTS"}).encode() + b"\0")
    stop = threading.Event()

    def listen():
        buf = b""
        sub.settimeout(0.2)
        while not stop.is_set():
            try:
                data = sub.recv(65536)
            except socket.timeout:
                continue
            if not data:
                return
            buf += data
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                events.append(json.loads(raw))
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    backend = None
    try:
        wait_for(lambda: events, 5, what="the subscription to be acknowledged")
        assert events[0]["status"] == "PROCESSING" and events[0]["id"] == "sub"
        assert get(proxy.port, "flaky.example")[0] == 503

        def kinds():
            return {e["data"]["kind"] for e in events[1:] if e.get("data")}
        wait_for(lambda: {"BACKEND_DOWN", "NO_AVAILABLE_BACKENDS"} <= kinds(), 5, what="down events")
        down = next(e for e in events if e.get("data") and e["data"]["kind"] == "BACKEND_DOWN")
        assert down["data"]["app_id"] == "flaky" and down["data"]["backend_id"] == "f1"
        assert down["data"]["address"] == f"127.0.0.1:{port}" and down["data"]["worker_id"] in (0, 1)
        backend = Backend("f1", port=port)
        wait_for(lambda: get(proxy.port, "flaky.example")[0] == 200 and "BACKEND_UP" in kinds(), 10,
                 interval=0.1, what="the backend up event")
    finally:
        stop.set()
        listener.join(2)
        sub.close()
        if backend is not None:
            backend.stop()


def test_dump_state(proxy):
    dump = ok(proxy.command({"id": "d", "version": 0, "type": "DUMP_STATE"}))["data"]
    assert set(dump) == {"listeners", "applications", "certificates"}
    listener = next(l for l in dump["listeners"] if l["address"] == proxy.address)
    assert listener["protocol"] == "http" and listener["active"] is True
    assert "app" in [a["app_id"] for a in dump["applications"]]
    assert dump["applications"] == query(proxy)


# -- stopping -------------------------------------------------------------------------------------

@pytest.fixture
def lone(tmp_path):
    backend = Backend("solo")
    port = free_port()
    s = Sozu(tmp_path, http_config(tmp_path, port, [backend.port]))
    s.port = port
    try:
        yield s.start()
    finally:
        s.stop()
        backend.stop()


def test_soft_stop_finishes_in_flight_requests(lone):
    result = {}
    thread = threading.Thread(target=lambda: result.update(answer=get(lone.port, "localhost", "/slow/1")))
    thread.start()
    time.sleep(0.3)
    assert ok(lone.order("SOFT_STOP"))["message"] == "soft stop of the proxy started"
    thread.join(5)
    assert result["answer"] == (200, "solo")
    assert lone.wait_exit(10) == 0
    assert not Path(lone.socket_path).exists()


def test_hard_stop_exits_now(lone):
    def cut_short():
        try:
            get(lone.port, "localhost", "/slow/5")
        except (OSError, http.client.HTTPException):
            pass  # what a hard stop does to a request in flight
    threading.Thread(target=cut_short, daemon=True).start()
    time.sleep(0.3)
    started = time.monotonic()
    ok(lone.order("HARD_STOP"))
    assert lone.wait_exit(10) == 0
    assert time.monotonic() - started < 3


def test_soft_stop_of_one_worker(lone):
    ok(lone.order("SOFT_STOP", worker_id=1))
    wait_for(lambda: [w["id"] for w in lone.workers()] == [0], 10, what="worker 1 to be gone")
    time.sleep(0.5)
    assert [w["id"] for w in lone.workers()] == [0]  # stopped for good: not respawned
    assert get(lone.port, "localhost") == (200, "solo")
    assert ok(lone.order("ADD_APPLICATION", {"app_id": "still"}))["message"] == \
        "ADD_APPLICATION applied by 1 workers"


def test_a_query_answer_larger_than_a_command_message_is_answered(proxy):
    """The workers' answers are not bound by the command socket's limit on requests (1 MB
    here): a QUERY of a large state comes back whole."""
    big = "HTTP/1.1 503 Unavailable\r\n\r\n" + "x" * 600_000
    for i in range(2):
        ok(proxy.order("ADD_APPLICATION", {"app_id": f"big-{i}", "answer_503": big}))
    views = query(proxy)
    assert [v["configuration"]["answer_503"] == big for v in views if v["app_id"].startswith("big-")] == [True] * 2
    for i in range(2):
        ok(proxy.order("REMOVE_APPLICATION", f"big-{i}"))
    assert "error in the master loop" not in proxy.log()


def test_an_answer_larger_than_the_outbox_limit_is_sent_whole(proxy):
    """16 MiB bounds what a client that never reads can pile up, not the size of one answer."""
    text = "HTTP/1.1 503 Unavailable\r\n\r\n" + "z" * 900_000
    apps = [f"huge-{i}" for i in range(20)]  # an 18 MB state
    try:
        for app_id in apps:
            ok(proxy.order("ADD_APPLICATION", {"app_id": app_id, "answer_503": text}))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(proxy.socket_path)
            sock.sendall(b'{"id": "d", "version": 0, "type": "DUMP_STATE"}\0')
            buf = bytearray()
            while not buf.endswith(b"\0"):
                chunk = sock.recv(1 << 20)
                assert chunk, f"closed after {len(buf)} bytes"
                buf += chunk
        assert len(buf) > 16 << 20
        data = ok(json.loads(buf[:-1]))["data"]
        assert [a["app_id"] for a in data["applications"] if a["app_id"].startswith("huge-")] == sorted(apps)
    finally:
        for app_id in apps:
            proxy.order("REMOVE_APPLICATION", app_id)


def test_metrics_disable_stops_the_counting_and_enable_resumes_it(tmp_path, backends):
    """Also in a worker forked after the DISABLE: the master remembers it for its replacements."""
    with running_proxy(tmp_path, backends[0].port, worker_count=1) as s:
        def requests() -> int:
            return ok(s.order("METRICS"))["data"]["total"].get("requests", 0)

        assert get(s.port, "localhost")[0] == 200
        wait_for(lambda: requests() == 1, 5, what="the first request to be counted")
        assert ok(s.order("METRICS", "DISABLE"))["data"]["total"]["requests"] == 1
        assert [get(s.port, "localhost")[0] for _ in range(3)] == [200] * 3
        assert requests() == 1
        old = s.workers()[0]["pid"]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: [w["pid"] for w in s.workers() if w["state"] == "running"] not in ([], [old]),
                 10, what="the replacement worker")
        assert get(s.port, "localhost")[0] == 200
        assert requests() == 0, "the replacement counts nothing while metrics are disabled"
        assert ok(s.order("METRICS", "ENABLE"))["status"] == "OK"
        assert get(s.port, "localhost")[0] == 200
        wait_for(lambda: requests() == 1, 5, what="the request after ENABLE to be counted")
