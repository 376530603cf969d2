"""GET /metrics: the Prometheus text format, aggregated over the workers and the master, read
with the Prometheus client library's own parser and checked against the traffic sent."""
from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import free_port, http_apps_config, request, wait_for


def scrape(port: int, method: str = "GET", path: str = "/metrics") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        answer = conn.getresponse()
        return answer.status, answer.getheader("Content-Type"), answer.read().decode()
    finally:
        conn.close()


def samples(port: int) -> dict:
    """{(name, frozenset of labels): value} of every sample, as the parser reads them."""
    status, content_type, text = scrape(port)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float | None:
    return found.get((name, frozenset(labels.items())))


@pytest.fixture
def scraped(tmp_path, sozu, backend):
    b = backend("b1")
    port, metrics_port = free_port(), free_port()
    s = sozu(http_apps_config(tmp_path, port, {"app": {"fronts": [("localhost", "")],
                                                        "backends": [f"127.0.0.1:{b.port}"]}},
                              worker_count=2, extra=f'[metrics]\nprometheus = "127.0.0.1:{metrics_port}"'))
    s.port, s.metrics_port, s.backend_address = port, metrics_port, f"127.0.0.1:{b.port}"
    return s


def test_metrics_count_the_traffic_sent(scraped):
    s = scraped
    app = {"application": "app", "backend": s.backend_address}
    before = samples(s.metrics_port)
    assert value(before, "sozu_workers", state="running") == 2
    assert value(before, "sozu_backend_up", backend_id="app-0", **app) == 1
    for _ in range(7):
        assert request(s.port).status == 200
    for _ in range(3):
        assert request(s.port, path="/status/404").status == 404
    assert request(s.port, path="/status/503").status == 503
    assert request(s.port, host="nowhere.example").status == 404  # no application

    def counted():
        found = samples(s.metrics_port)
        return found if value(found, "sozu_http_request_duration_seconds_count", application="app") == 11 else None
    found = wait_for(counted, 10, what="the 11 requests counted by the workers")
    assert value(found, "sozu_http_requests_total", status_class="2xx", **app) == 7
    assert value(found, "sozu_http_requests_total", status_class="4xx", **app) == 3
    assert value(found, "sozu_http_requests_total", status_class="5xx", **app) == 1
    assert value(found, "sozu_http_requests_total", application="", backend="", status_class="4xx") == 1
    assert value(found, "sozu_http_request_duration_seconds_bucket", application="app", le="+Inf") == 11
    assert value(found, "sozu_backend_response_duration_seconds_count", application="app") == 11
    assert 0 < value(found, "sozu_http_request_duration_seconds_sum", application="app") < 11 * 5
    assert value(found, "sozu_http_received_bytes_total", **app) > 11 * 20
    assert value(found, "sozu_http_sent_bytes_total", **app) > 7 * 100
    assert value(found, "sozu_accepted_connections_total") >= 12
    # The clients closed their connections; a worker may take a moment to see it.
    wait_for(lambda: value(samples(s.metrics_port), "sozu_active_connections") == 0, 10,
             what="no connection left open")
    # Sums over both workers: each answered some of these (new connections, shared socket).
    assert value(found, "sozu_orders_applied_total") == 0
    assert s.ctl("backend", "add", "--id=app", "--backend-id=dead", "--address=127.0.0.1:9").returncode == 0
    found = samples(s.metrics_port)
    assert value(found, "sozu_orders_applied_total") == 1
    assert value(found, "sozu_backend_up", application="app", backend_id="dead", backend="127.0.0.1:9") == 1


def test_connect_errors_retries_and_restarts(scraped):
    s = scraped
    assert s.ctl("backend", "add", "--id=app", "--backend-id=dead", "--address=127.0.0.1:9").returncode == 0
    for _ in range(6):
        assert request(s.port).status == 200  # the dead one is tried once per worker, then rests
    found = wait_for(lambda: (f := samples(s.metrics_port)) and value(
        f, "sozu_backend_connect_errors_total", application="app", backend="127.0.0.1:9") and f, 10,
        what="a connect error counted")
    assert value(found, "sozu_backend_retries_total", application="app") >= 1
    # A worker resting it after the failure: not up (no active checks here).
    assert value(found, "sozu_backend_up", application="app", backend_id="dead", backend="127.0.0.1:9") == 0
    pid = s.workers()[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: value(samples(s.metrics_port), "sozu_worker_restarts_total") == 1, 10,
             what="the restart counted")


def test_the_endpoint_answers_only_get_metrics_and_silent_clients_cost_nothing(scraped):
    s = scraped
    assert scrape(s.metrics_port, path="/")[0] == 404
    assert scrape(s.metrics_port, method="POST")[0] == 405
    status, _, text = scrape(s.metrics_port, method="HEAD")
    assert status == 200 and text == ""
    with socket.create_connection(("127.0.0.1", s.metrics_port)) as silent:
        silent.sendall(b"GET /metr")  # and never more
        assert value(samples(s.metrics_port), "sozu_workers", state="running") == 2
        assert request(s.port).status == 200


PACE = 0.02  # s between two scrapes of the Scraper


class Scraper(threading.Thread):
    """Scrapes /metrics as Prometheus does, on a new connection each time, until stopped. A
    scrape that fails is tried again at once, up to RETRIES times: `retried` counts those,
    `failures` what still failed; `scrapes` holds every answer, in order."""
    RETRIES = 2

    def __init__(self, port: int):
        super().__init__(daemon=True, name="scraper")
        self.port = port
        self.scrapes: list[dict] = []
        self.failures: list[str] = []
        self.retried = 0
        self.running = threading.Event()
        self.running.set()

    def run(self) -> None:
        while self.running.is_set():
            for attempt in range(1 + self.RETRIES):
                try:
                    self.scrapes.append(samples(self.port))
                    break
                except (OSError, http.client.HTTPException, AssertionError) as error:
                    if attempt == self.RETRIES:
                        self.failures.append(f"{type(error).__name__}: {error}")
                    else:
                        self.retried += 1
            time.sleep(PACE)  # pacing, as a scrape interval would: nothing waits on it

    def stop(self) -> None:
        self.running.clear()
        self.join(30)


def test_the_endpoint_answers_across_an_upgrade_from_the_new_generation(scraped):
    """Scrapes never stop being answered while `sozuctl upgrade` replaces the master and its
    workers under load; the listening socket is handed over, not bound again; once the new
    master serves it answers (generation 1, never the old one again), and every counter only
    grows within a generation; the new generation counts its own traffic."""
    from tests.integration.load import Load, LoadClient, alive, listening_inode
    s = scraped
    inode = listening_inode(s.metrics_port)
    old_master = next(w["pid"] for w in s.command({"id": "m", "version": 0, "type": "LIST_WORKERS"})
                      ["data"]["workers"] if w["id"] == "master")
    scraper = Scraper(s.metrics_port)
    with Load(LoadClient(s.port)) as load:
        scraper.start()
        try:
            wait_for(lambda: len(scraper.scrapes) >= 3, what="scrapes before the upgrade")
            upgraded = s.ctl("--timeout=40000", "upgrade")
            assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
            wait_for(lambda: not alive(old_master), 20, what="the old master to exit")
            seen = len(scraper.scrapes)
            wait_for(lambda: len(scraper.scrapes) >= seen + 3, what="scrapes after the upgrade")
        finally:
            scraper.stop()
    assert load.failures == [], load.failures[:5]
    assert scraper.failures == [], (scraper.failures[:5], scraper.retried)

    generations = [value(found, "sozu_master_generation") for found in scraper.scrapes]
    assert generations == sorted(generations) and generations[0] == 0 and generations[-1] == 1, generations
    app = {"application": "app", "backend": s.backend_address, "status_class": "2xx"}
    for generation in (0, 1):
        served = [value(found, "sozu_http_requests_total", **app) or 0
                  for found in scraper.scrapes if value(found, "sozu_master_generation") == generation]
        assert served == sorted(served), (generation, served)
    last = scraper.scrapes[-1]
    assert value(last, "sozu_workers", state="running") == 2
    assert listening_inode(s.metrics_port) == inode  # handed over, never bound again

    before = value(samples(s.metrics_port), "sozu_http_requests_total", **app) or 0
    for _ in range(5):
        assert request(s.port).status == 200
    wait_for(lambda: value(samples(s.metrics_port), "sozu_http_requests_total", **app) == before + 5,
             what="the new generation counting its own requests")
