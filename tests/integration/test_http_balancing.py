"""Load balancing through a real proxy (one worker, so one balancer): the four policies over
weighted backends, backup backends, passive health (a dead backend costs no failed request,
comes back after its backoff), a fully dead application answering 503 at once."""
import threading
import time
from collections import Counter

import pytest

from tests.integration.harness import Backend, Sozu, free_port, http_apps_config, request, wait_for


def b(backend, weight=None, **extra):
    data = {"address": f"127.0.0.1:{backend if isinstance(backend, int) else backend.port}", **extra}
    if weight is not None:
        data["weight"] = weight
    return data


@pytest.fixture(scope="module")
def lb(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("balancing")
    (tmp / "503.http").write_text("HTTP/1.1 503 Service Unavailable\nContent-Length: 14\nConnection: close\n\n"
                                  "all gone, sry\n")
    names = ["heavy", "light", "slow_a", "slow_b", "primary", "backup", "p2", "live", "zero"]
    backends = {name: Backend(name) for name in names}
    dead, dead2, comeback = free_port(), free_port(), free_port()
    apps = {
        "rr": ([b(backends["heavy"], 300), b(backends["light"], 100)], ""),
        "random": ([b(backends["heavy"], 100), b(backends["light"], 300)], 'load_balancing_policy = "random"'),
        "p2": ([b(backends["heavy"], 300), b(backends["light"], 100)], 'load_balancing_policy = "poweroftwo"'),
        "least": ([b(backends["slow_a"]), b(backends["slow_b"])], 'load_balancing_policy = "leastconnections"'),
        "backup": ([b(backends["primary"]), b(backends["backup"], backup=True)], ""),
        "backup_dead": ([b(dead), b(backends["p2"]), b(backends["backup"], backup=True)], ""),
        "only_backup": ([b(dead), b(backends["backup"], backup=True)], ""),
        "one_dead": ([b(dead), b(backends["live"])], ""),
        "all_dead": ([b(dead), b(dead2)], 'answer_503 = "503.http"'),
        "comeback": ([b(comeback), b(backends["live"])], ""),
        "zero": ([b(backends["zero"], 0), b(backends["live"])], ""),
    }
    port = free_port()
    config = http_apps_config(tmp, port, {
        name: {"fronts": [(f"{name}.test", "")], "backends": backs, "extra": extra}
        for name, (backs, extra) in apps.items()})
    proxy = Sozu(tmp, config).start()
    proxy.port, proxy.comeback_port, proxy.backends = port, comeback, backends
    yield proxy
    proxy.stop()
    for backend in backends.values():
        backend.stop()


def served(proxy, app: str, n: int, path: str = "/") -> Counter:
    seen = Counter()
    for _ in range(n):
        response = request(proxy.port, "GET", path, host=f"{app}.test")
        assert response.status == 200, response
        seen[response.header("X-Backend")] += 1
    return seen


def test_roundrobin_follows_the_weights_exactly(lb):
    assert served(lb, "rr", 40) == {"heavy": 30, "light": 10}


def test_random_follows_the_weights(lb):
    seen = served(lb, "random", 300)
    assert 180 < seen["light"] < 270, seen


def test_poweroftwo_unloaded_is_weighted_random(lb):
    seen = served(lb, "p2", 300)
    assert 180 < seen["heavy"] < 270, seen


def test_leastconnections_avoids_the_busy_backend(lb):
    slow = {}
    thread = threading.Thread(target=lambda: slow.update(r=request(lb.port, "GET", "/slow/1", host="least.test")))
    thread.start()
    try:
        wait_for(lambda: lb.backends["slow_a"].active + lb.backends["slow_b"].active == 1,
                 what="the slow request to be in flight at its backend")
        quick = served(lb, "least", 6)
        assert len(quick) == 1, f"every quick request goes to the idle backend: {quick}"
        busy = ({"slow_a", "slow_b"} - set(quick)).pop()
    finally:
        thread.join()
    assert slow["r"].header("X-Backend") == busy


def test_backup_is_unused_while_a_primary_is_up(lb):
    assert served(lb, "backup", 10) == {"primary": 10}
    assert served(lb, "backup_dead", 10) == {"p2": 10}, "the other primary, never the backup"


def test_backup_serves_when_no_primary_is_up(lb):
    assert served(lb, "only_backup", 10) == {"backup": 10}


def test_weight_zero_gets_no_new_client(lb):
    assert served(lb, "zero", 10) == {"live": 10}


def test_a_dead_backend_costs_no_failed_request(lb):
    started = time.monotonic()
    assert served(lb, "one_dead", 30) == {"live": 30}
    assert time.monotonic() - started < 2


def test_a_fully_dead_application_answers_503_at_once(lb):
    for _ in range(5):
        started = time.monotonic()
        response = request(lb.port, "GET", "/", host="all_dead.test")
        assert time.monotonic() - started < 0.5
        assert response.status == 503
        assert response.body == b"all gone, sry\n", "the application's answer_503"


def test_a_backend_that_comes_back_is_used_again(lb):
    assert served(lb, "comeback", 4) == {"live": 4}
    revived = Backend("revived", port=lb.comeback_port)
    try:
        # after its backoff (1 s, doubling) the backend is tried again and, up, takes its share
        wait_for(lambda: served(lb, "comeback", 2)["revived"] > 0, timeout=6, interval=0.1,
                 what="the revived backend to be used again")
        assert served(lb, "comeback", 10) == {"live": 5, "revived": 5}
    finally:
        revived.stop()


def test_a_dead_application_under_load_does_not_flood_the_master(tmp_path, sozu):
    """NO_AVAILABLE_BACKENDS goes to the master once a second at most per application, however
    many requests get a 503 (each event costs the master a message)."""
    import json
    import socket as socketlib
    port = free_port()
    proxy = sozu(http_apps_config(tmp_path, port, {
        "dead": {"fronts": [("dead.test", "")], "backends": [f"127.0.0.1:{free_port()}"]},
        "marker": {"fronts": [("marker.test", "")], "backends": [f"127.0.0.1:{free_port()}"]}}))
    events = []
    with socketlib.socket(socketlib.AF_UNIX) as sub:
        sub.connect(proxy.socket_path)
        sub.sendall(json.dumps({"id": "sub", "version": 0, "type": "SUBSCRIBE_EVENTS"}).encode() + b"\0")
        sub.settimeout(5)
        buf = b""

        def received(kind, app):
            nonlocal buf
            while not any(e.get("data") and (e["data"].get("kind"), e["data"].get("app_id")) == (kind, app)
                          for e in events):
                buf += sub.recv(65536)
                while b"\0" in buf:
                    raw, buf = buf.split(b"\0", 1)
                    events.append(json.loads(raw))
            return True

        wait_for(lambda: buf or sub.recv(1, socketlib.MSG_PEEK), what="the subscription")
        started = time.monotonic()
        for _ in range(200):
            assert request(port, "GET", "/", host="dead.test").status == 503
        elapsed = time.monotonic() - started
        assert request(port, "GET", "/", host="marker.test").status == 503
        received("NO_AVAILABLE_BACKENDS", "marker")  # after every event of the flood
    flood = [e for e in events if e.get("data") and e["data"].get("kind") == "NO_AVAILABLE_BACKENDS"
             and e["data"].get("app_id") == "dead"]
    assert 1 <= len(flood) <= int(elapsed) + 1, (len(flood), elapsed)
