"""The fault soak (`bench/soak.py --only faults --duration 30m`): mixed load while faults are made
on purpose, with real processes, and a text report and a PNG plot of what happened.

Load, all of it checked answer by answer (tests/integration/load.py says what a failure is):
keep-alive and new-connection HTTP clients, 256 KiB uploads, 1 MB downloads, WebSocket
tunnels (upgrade, echo, close), HTTPS with two requests a connection, a TCP echo client, and a
keep-alive client of an application whose backends the soak kills.

Faults, spread over the duration by one scheduler: 1,000 runtime changes (applications, fronts,
backends, certificates, a listener added through the command socket), worker processes killed
with SIGKILL, backends killed and restarted on the same port, 10 upgrades, over-limit floods
(more idle connections than every worker's max_connections together) and slowloris
connections (a header byte a second, cut by request_timeout).

A failed request is classified by what the soak did at that moment: its backend was killed
(the flaky application only), its worker was SIGKILLed (no process can answer what its dead
process held), an over-limit flood was running and the answer was the 503 of the connection
limit (by design; TLS and TCP connections are closed instead). Everything else is an unexplained failure, and the goal is none.

The final `state dump` must equal a ConfigState built in this process from the configuration
and every change the proxy accepted. RSS and open file descriptors of the master and of the
workers are sampled every 2 s; after warm-up (the first fifth) their median over the last tenth
may exceed the one right after warm-up by 10% at most (open fds: or by FD_NOISE, the
connections a sample may catch open). Since upgrades and kills replace processes, which resets
their RSS, each process is also checked over its own life (from 20 s in to its end).
"""
from __future__ import annotations

import collections
import http.client
import json
import os
import random
import resource
import signal
import socket
import ssl
import statistics
import threading
import time
from pathlib import Path

from sozu.config import parse
from sozu.messages import Order
from sozu.state import ConfigState
from tests.integration.certs import TestCA
from tests.integration.harness import Backend, Sozu, ThreadedServer, free_port, read_head
from tests.integration.load import LoadClient, alive, rss_kib

CHANGES = 1000
UPGRADES = 10
WORKERS = 2
MAX_CONNECTIONS = 300
UPLOAD = 256 * 1024
DOWNLOAD = 1_000_000
SAMPLE_EVERY = 2.0
# A sample of open fds also counts the connections open at that instant: 8 clients, each with a
# backend side, and the backend connections kept idle. A leak shows as more than that.
FD_NOISE = 16


# -- load ------------------------------------------------------------------------------------
class Recorder:
    """Counts what a client did, per second since the start, and when each failure happened."""

    def __init__(self, name: str, t0: float, host: str | None = None):
        self.name, self.t0, self.host = name, t0, host
        self.done = collections.Counter()  # second -> requests completed
        self.failure_log: list[tuple[float, str]] = []

    def record_ok(self) -> None:
        self.done[int(time.monotonic() - self.t0)] += 1

    def record_failure(self, error: BaseException) -> None:
        self.failure_log.append((time.monotonic(), f"{type(error).__name__}: {error}"))


class HttpClient(LoadClient):
    """tests/integration/load.py's client, with the time of every answer and failure."""

    def __init__(self, port: int, t0: float, **kwargs):
        super().__init__(port, **kwargs)
        self.recorder = Recorder(self.name, t0, self.host)

    def one(self, path: str) -> None:
        try:
            super().one(path)
        except Exception as error:
            self.recorder.record_failure(error)
            raise
        self.recorder.record_ok()


class StepClient(threading.Thread):
    """Calls step() in a loop until stopped; each call is one request, ok or failed."""

    def __init__(self, name: str, t0: float, step, host: str | None = None):
        super().__init__(daemon=True, name=name)
        self.step, self.recorder = step, Recorder(name, t0, host)
        self.running = threading.Event()
        self.running.set()
        self.ok = 0

    def run(self) -> None:
        while self.running.is_set():
            try:
                self.step()
            except Exception as error:  # a failure, kept with its time and what happened
                self.recorder.record_failure(error)
                time.sleep(0.05)
            else:
                self.ok += 1
                self.recorder.record_ok()

    def stop(self) -> None:
        self.running.clear()
        self.join(30)


def upload(port: int) -> None:
    body = os.urandom(UPLOAD)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/upload", body=body, headers={"Host": "localhost"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status != 200 or json.loads(data)["body_length"] != UPLOAD:
        raise AssertionError(f"upload: status {response.status}, {data[:100]!r}")


class HttpsPairs:
    """Two requests on one new TLS connection (keep-alive inside TLS). When the second finds the
    connection closed without a byte of answer (a draining worker closes idle connections), it
    is sent once more on a new connection and counted as a retry: tests/integration/load.py's
    rule, what browsers do."""

    def __init__(self, port: int, context: ssl.SSLContext):
        self.port, self.context = port, context
        self.retries = 0

    def connect(self) -> http.client.HTTPConnection:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.sock = self.context.wrap_socket(raw, server_hostname="secure.test")  # SNI, verified
        return conn

    def __call__(self) -> None:
        conn = self.connect()
        try:
            self.get(conn, "/a")
            try:
                self.get(conn, "/b")
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.retries += 1
                conn.close()
                conn = self.connect()
                self.get(conn, "/b")
        finally:
            conn.close()

    @staticmethod
    def get(conn, path: str) -> None:
        conn.request("GET", path, headers={"Host": "secure.test"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200 or json.loads(data)["path"] != path:
            raise AssertionError(f"https {path}: status {response.status}")


def websocket(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        head = read_head(sock)
        if not head or not head.startswith(b"HTTP/1.1 101"):
            raise AssertionError(f"websocket: {head[:40] if head else b'no answer'!r}")
        rest = head.partition(b"\r\n\r\n")[2]
        for i in range(3):
            message = b"message %d " % i * 20
            sock.sendall(message)
            rest = _read(sock, rest, len(message))
            if rest[:len(message)] != message.upper():
                raise AssertionError("websocket: wrong echo")
            rest = rest[len(message):]


def tcp_echo(port: int) -> None:
    data = os.urandom(64 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if _read(sock, b"", len(data)) != data:
            raise AssertionError("tcp: wrong echo")


def _read(sock, have: bytes, n: int) -> bytes:
    while len(have) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {len(have)} of {n} bytes")
        have += chunk
    return have


class UpperEcho(ThreadedServer):
    """The WebSocket backend: 101, then every byte back in upper case."""

    def handle(self, conn) -> None:
        with conn:
            conn.settimeout(30)
            try:
                head = read_head(conn)
                if head is None:
                    return
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                             b"Upgrade: websocket\r\n\r\n" + head.partition(b"\r\n\r\n")[2].upper())
                while data := conn.recv(65536):
                    conn.sendall(data.upper())
            except OSError:
                return


class TcpEcho(ThreadedServer):
    def handle(self, conn) -> None:
        with conn:
            conn.settimeout(30)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                return


# -- faults ----------------------------------------------------------------------------------
# What a refusal of the connection limit looks like to a client: a 503 on HTTP; TLS and TCP
# connections are closed without a word (DESIGN §7), before the handshake or the first byte.
REFUSAL_SIGNS = ("503", "closed after 0 of", "EOF occurred", "UNEXPECTED_EOF",
                 "ConnectionResetError", "RemoteDisconnected")


class Faults:
    """What the soak did, and when: the windows that explain a failure."""

    def __init__(self):
        self.backend_down: list[list[float]] = []   # [start, end] of a killed flaky backend
        self.worker_kills: list[float] = []
        self.floods: list[list[float]] = []
        self.upgrades: list[tuple[float, float]] = []
        self.events: list[tuple[float, str]] = []

    def explain(self, t: float, message: str, flaky: bool) -> str:
        if flaky and any(start - 0.5 <= t <= (end or t) + 2.0 for start, end in self.backend_down):
            return "its backend was killed"
        if any(s <= t <= (e or t) + 1.0 for s, e in self.floods) and any(
                sign in message for sign in REFUSAL_SIGNS):
            return "refused by the connection limit during a flood"
        if any(k <= t <= k + 3.0 for k in self.worker_kills):
            return "its worker was SIGKILLed"
        return "unexplained"


class Changes:
    """1,000 runtime changes, each an order the proxy accepts, mirrored in a ConfigState."""

    def __init__(self, s: Sozu, expected: ConfigState, port: int, https_port: int, backend_port: int,
                 ca: TestCA):
        self.s, self.expected, self.port, self.https_port = s, expected, port, https_port
        self.backend_port, self.ca = backend_port, ca
        self.applied = 0
        self.refused: list[str] = []
        self.worker_errors: list[str] = []
        self.serial = 0
        self.certificate = None  # the churning certificate on the https listener: (leaf, fingerprint)
        self.pending = collections.deque()
        self.listeners_added: list[int] = []

    def next_orders(self) -> list[tuple[str, dict]]:
        """One cycle: an application with a front and a backend, then (four times in five)
        removed again; a certificate added or replaced every tenth cycle; a listener added
        every hundredth."""
        self.serial += 1
        n = self.serial
        app = f"churn-{n}"
        address = f"127.0.0.1:{self.port}"
        orders = [("ADD_APPLICATION", {"app_id": app, "load_balancing_policy": "RoundRobin"}),
                  ("ADD_HTTP_FRONT", {"app_id": app, "address": address, "hostname": f"{app}.test"}),
                  ("ADD_BACKEND", {"app_id": app, "backend_id": f"{app}-0",
                                   "address": f"127.0.0.1:{self.backend_port}"})]
        if n % 5:
            orders += [("REMOVE_HTTP_FRONT", {"app_id": app, "address": address, "hostname": f"{app}.test"}),
                       ("REMOVE_BACKEND", {"app_id": app, "backend_id": f"{app}-0",
                                           "address": f"127.0.0.1:{self.backend_port}"}),
                       ("REMOVE_APPLICATION", app)]
        if n % 10 == 0:
            leaf = self.ca.issue(["churn.test"])
            https = f"127.0.0.1:{self.https_port}"
            if self.certificate is None:
                orders.append(("ADD_CERTIFICATE", {"front": https, "names": [],
                                                   "certificate": leaf.order_certificate()}))
            else:
                orders.append(("REPLACE_CERTIFICATE", {"front": https,
                                                       "old_fingerprint": self.certificate.fingerprint,
                                                       "new_certificate": leaf.order_certificate()}))
            self.certificate = leaf
        if n % 100 == 50:
            listen = free_port()
            self.listeners_added.append(listen)
            orders += [("ADD_HTTP_LISTENER", {"front": f"127.0.0.1:{listen}"}),
                       ("ACTIVATE_LISTENER", {"front": f"127.0.0.1:{listen}", "proxy": "HTTP"})]
        return orders

    def apply_one(self) -> None:
        if not self.pending:
            self.pending.extend(self.next_orders())
        kind, data = self.pending[0]
        answer = self.s.command({"id": f"change-{self.applied}", "version": 0, "type": "PROXY",
                                 "data": {"type": kind, "data": data}}, timeout=30)
        # ERROR only from workers ("worker 1: worker exited": SIGKILLed meanwhile): the master
        # applied the change, and the replacement worker starts from the master's state.
        by_workers = all(part.startswith("worker ") for part in answer["message"].split("; "))
        if answer["status"] == "OK" or by_workers:
            self.pending.popleft()
            self.expected.dispatch(Order.from_json({"type": kind, "data": data}))
            self.applied += 1
            if answer["status"] != "OK":
                self.worker_errors.append(f"{kind}: {answer['message']}")
        elif "upgrade is in progress" in answer["message"] or "draining" in answer["message"]:
            return  # the next call sends it again, to the master that serves now
        else:
            self.pending.popleft()
            self.refused.append(f"{kind}: {answer['message']}")


def flood(port: int, count: int, hold: float) -> dict:
    """`count` idle connections held for `hold` s: more than every worker's limit together."""
    held, statuses = [], collections.Counter()
    for _ in range(count):
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError as error:
            statuses[type(error).__name__] += 1
    time.sleep(hold)
    for sock in held:
        sock.close()
    statuses["opened"] = len(held)
    return dict(statuses)


def slowloris(port: int, count: int, seconds: float) -> int:
    """`count` connections sending a header byte a second; returns how many the proxy cut."""
    socks = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
            socks.append(sock)
        except OSError:
            continue
    cut = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(cut) < len(socks):
        for i, sock in enumerate(socks):
            if i in cut:
                continue
            try:
                sock.sendall(b"X")
            except OSError:
                cut.add(i)
        time.sleep(1)
    for sock in socks:
        sock.close()
    return len(cut)


# -- sampling --------------------------------------------------------------------------------
def processes(s: Sozu) -> tuple[int | None, list[int]]:
    try:
        answer = s.command({"id": "p", "version": 0, "type": "LIST_WORKERS"}, timeout=5)
    except (OSError, ConnectionError, ValueError):
        return None, []
    rows = answer["data"]["workers"]
    master = next((w["pid"] for w in rows if w["id"] == "master"), None)
    return master, [w["pid"] for w in rows if w["id"] != "master" and w["pid"] and w["state"] == "running"]


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def rss(pid: int) -> int:
    try:
        return rss_kib(pid)
    except OSError:
        return 0


# -- the soak --------------------------------------------------------------------------------
def config_text(directory: Path, port: int, https_port: int, tcp_port: int, leaf, backends: dict) -> str:
    def addresses(ports):
        return ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    return f"""
command_socket = "{directory}/sozu.sock"
worker_count = {WORKERS}
max_connections = {MAX_CONNECTIONS}
log_level = "info"
log_access_target = "off"
front_timeout = 10
back_timeout = 10
connect_timeout = 2
request_timeout = 3
shutdown_grace_period = 10
worker_heartbeat_timeout = 10

[[listeners]]
protocol = "http"
address = "127.0.0.1:{port}"

[[listeners]]
protocol = "https"
address = "127.0.0.1:{https_port}"

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:{tcp_port}"

[applications.stable]
protocol = "http"
frontends = [ {{ address = "127.0.0.1:{port}", hostname = "localhost" }},
              {{ address = "127.0.0.1:{https_port}", hostname = "secure.test", certificate = "{leaf.cert_path}", key = "{leaf.key_path}" }} ]
backends = [ {addresses(backends["stable"])} ]

[applications.flaky]
protocol = "http"
frontends = [ {{ address = "127.0.0.1:{port}", hostname = "flaky.test" }} ]
backends = [ {addresses(backends["flaky"])} ]

[applications.ws]
protocol = "http"
frontends = [ {{ address = "127.0.0.1:{port}", hostname = "ws.test" }} ]
backends = [ {addresses(backends["ws"])} ]

[applications.echo]
protocol = "tcp"
frontends = [ {{ address = "127.0.0.1:{tcp_port}" }} ]
backends = [ {addresses(backends["tcp"])} ]
"""


def run(base: Path, duration: float, report_dir: Path) -> list[str]:
    """The soak; returns the failed checks (empty: every goal met)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # floods hold ~1,000 sockets
    directory = base / "faults"
    directory.mkdir(parents=True, exist_ok=True)
    ca = TestCA(directory / "ca")
    leaf = ca.issue(["secure.test"])
    stable = [Backend("s1"), Backend("s2")]
    flaky = [Backend("f1"), Backend("f2")]
    ws_backend, tcp_backend = UpperEcho(), TcpEcho()
    port, https_port, tcp_port = free_port(), free_port(), free_port()
    text = config_text(directory, port, https_port, tcp_port, leaf, {
        "stable": [b.port for b in stable], "flaky": [b.port for b in flaky],
        "ws": [ws_backend.port], "tcp": [tcp_backend.port]})
    s = Sozu(directory, text).start()
    config_path = directory / "sozu.toml"
    expected = ConfigState.from_orders(parse(config_path.read_text(), str(config_path)).to_orders())

    t0 = time.monotonic()
    context = ssl.create_default_context(cafile=str(ca.path))
    clients = [
        HttpClient(port, t0, name="keep-alive"),
        HttpClient(port, t0, keep_alive=False, name="new-connection"),
        HttpClient(port, t0, paths=(f"/size/{DOWNLOAD}",), name="download 1 MB"),
        HttpClient(port, t0, host="flaky.test", name="flaky backends"),
        StepClient("upload 256 KiB", t0, lambda: upload(port)),
        StepClient("https", t0, HttpsPairs(https_port, context)),
        StepClient("websocket", t0, lambda: websocket(port)),
        StepClient("tcp", t0, lambda: tcp_echo(tcp_port)),
    ]
    faults = Faults()
    changes = Changes(s, expected, port, https_port, stable[0].port, ca)
    samples: list[dict] = []
    floods, slow_cut = [], []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_EVERY):
            master, workers = processes(s)
            if master is None:
                continue
            samples.append({"t": time.monotonic() - t0, "rss_by_pid": {p: rss(p) for p in [master, *workers]},
                            "master_rss": rss(master),
                            "workers_rss": max((rss(p) for p in workers), default=0),
                            "workers_rss_total": sum(rss(p) for p in workers),
                            "master_fds": fd_count(master),
                            "workers_fds": max((fd_count(p) for p in workers), default=0)})

    def event(what: str) -> None:
        faults.events.append((time.monotonic() - t0, what))
        print(f"  {time.monotonic() - t0:7.1f} s  {what}", flush=True)

    def kill_worker() -> None:
        _, workers = processes(s)
        if workers:
            victim = random.choice(workers)
            faults.worker_kills.append(time.monotonic())
            os.kill(victim, signal.SIGKILL)
            event(f"SIGKILL worker pid {victim}")

    def bounce_backend(index: int) -> None:
        victim = flaky[index]
        window = [time.monotonic(), None]
        faults.backend_down.append(window)
        victim.stop()
        victim.close_connections()
        event(f"backend {victim.server.name} killed")
        time.sleep(3)
        flaky[index] = Backend(victim.server.name, port=victim.port)
        window[1] = time.monotonic()
        event(f"backend {victim.server.name} restarted")

    def upgrade() -> None:
        start = time.monotonic()
        done = s.ctl("--timeout=60000", "upgrade", timeout=90)
        faults.upgrades.append((start, time.monotonic()))
        event(f"upgrade: {'OK' if done.returncode == 0 else 'FAILED ' + done.stdout + done.stderr}"
              f" in {time.monotonic() - start:.1f} s")
        if done.returncode != 0:
            faults.events.append((time.monotonic() - t0, "upgrade failed"))

    def flood_now() -> None:
        window = [time.monotonic(), None]
        faults.floods.append(window)
        result = flood(port, WORKERS * MAX_CONNECTIONS + 300, hold=3)
        window[1] = time.monotonic()
        floods.append(result)
        event(f"over-limit flood: {result}")

    def slowloris_now() -> None:
        cut = slowloris(port, 200, seconds=10)
        slow_cut.append(cut)
        event(f"slowloris: {cut}/200 connections cut by the proxy")

    # The schedule: each fault kind spread evenly over the time after a short warm-up.
    warm = min(30.0, duration * 0.1)
    span = duration - warm - 5
    schedule = []
    for i in range(UPGRADES):
        schedule.append((warm + span * (i + 0.5) / UPGRADES, "upgrade", upgrade))
    for i in range(max(3, int(duration // 150))):
        # 0.45: never at the time of a flood (0.15 of a sixth is 0.3 of a twelfth), whose
        # refusals would be counted against the kill
        schedule.append((warm + span * (i + 0.45) / max(3, int(duration // 150)), "kill", kill_worker))
    bounces = max(4, int(duration // 120))
    for i in range(bounces):
        schedule.append((warm + span * (i + 0.7) / bounces, "bounce", lambda i=i: bounce_backend(i % 2)))
    for i in range(max(2, int(duration // 300))):
        n = max(2, int(duration // 300))
        schedule.append((warm + span * (i + 0.15) / n, "flood", flood_now))
        schedule.append((warm + span * (i + 0.6) / n, "slowloris", slowloris_now))
    schedule.sort(key=lambda item: item[0])
    change_every = span / CHANGES

    print(f"\n== 4. fault soak: {duration:.0f} s of mixed load, {CHANGES} changes, {UPGRADES} upgrades, "
          f"SIGKILLed workers, killed backends, floods", flush=True)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    helpers: list[threading.Thread] = []
    for client in clients:
        client.start()
    try:
        next_change = warm
        while time.monotonic() - t0 < duration - 5:
            now = time.monotonic() - t0
            while schedule and schedule[0][0] <= now:
                _, kind, action = schedule.pop(0)
                if kind in ("flood", "slowloris", "bounce"):  # these take seconds: in the background
                    helper = threading.Thread(target=action, daemon=True)
                    helper.start()
                    helpers.append(helper)
                else:
                    action()
            if changes.applied < CHANGES and now >= next_change:
                changes.apply_one()
                next_change += change_every
                continue
            time.sleep(0.01)
        while changes.applied < CHANGES:  # an upgrade late in the run may have delayed some
            changes.apply_one()
        for helper in helpers:
            helper.join(60)
        time.sleep(3)
        for client in clients:
            client.stop()
        stop.set()
        sampler.join(10)
        final = s.command({"id": "dump", "version": 0, "type": "DUMP_STATE"})["data"]
        listener_checks = [_http_status(p) for p in changes.listeners_added]
    finally:
        stop.set()
        for client in clients:
            client.running.clear()
        s.stop()
        for backend in stable + flaky:
            backend.stop()
        ws_backend.stop()
        tcp_backend.stop()
    return report(report_dir, duration, clients, faults, changes, final, expected.to_json(), samples,
                  floods, slow_cut, listener_checks, warm)


def _http_status(port: int):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": "nobody.test"})
        return conn.getresponse().status
    except OSError as error:
        return type(error).__name__
    finally:
        conn.close()


# -- report ----------------------------------------------------------------------------------
def report(report_dir: Path, duration, clients, faults: Faults, changes: Changes, final, expected,
           samples, floods, slow_cut, listener_checks, warm) -> list[str]:
    report_dir.mkdir(parents=True, exist_ok=True)
    lines, failed = [], []

    def out(line: str = "") -> None:
        lines.append(line)
        print(line, flush=True)

    def check(ok: bool, what: str) -> None:
        out(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            failed.append(what)

    causes = collections.Counter()
    unexplained = []
    total_ok = 0
    out(f"fault soak, {duration:.0f} s (a shared machine: figures are indicative)")
    out("load:")
    for client in clients:
        recorder = client.recorder
        ok = sum(recorder.done.values())
        total_ok += ok
        client_causes = collections.Counter()
        examples = {}
        for t, message in recorder.failure_log:
            cause = faults.explain(t, message, flaky=recorder.host == "flaky.test")
            client_causes[cause] += 1
            examples.setdefault(cause, message)
            if cause == "unexplained":
                unexplained.append(f"{client.name} at {t - recorder.t0:.1f} s: {message}")
        causes.update(client_causes)
        extra = ""
        if isinstance(client, LoadClient):
            extra = f", {client.idle_closed} reconnects after an idle close, {client.retries} retries"
        elif isinstance(client.step, HttpsPairs):
            extra = f", {client.step.retries} retries"
        out(f"  {client.name}: {ok} ok, {len(recorder.failure_log)} failed {dict(client_causes)}{extra}")
        for cause, message in examples.items():
            out(f"    e.g. {cause}: {message[:160]}")
    out(f"  total: {total_ok} requests ok, {total_ok / duration:.0f}/s; failures by cause: {dict(causes)}")
    for line in unexplained[:20]:
        out(f"    unexplained: {line}")
    out("faults:")
    out(f"  runtime changes applied: {changes.applied} ({len(changes.refused)} refused; "
        f"{len(changes.worker_errors)} answered ERROR by a worker SIGKILLed meanwhile)")
    for line in changes.refused[:5]:
        out(f"    refused: {line}")
    upgrades = len(faults.upgrades)
    failed_upgrades = sum(1 for _, what in faults.events if what == "upgrade failed")
    out(f"  upgrades: {upgrades} ({failed_upgrades} failed), "
        f"mean {statistics.mean([b - a for a, b in faults.upgrades]) if faults.upgrades else 0:.1f} s")
    out(f"  workers SIGKILLed: {len(faults.worker_kills)}; backends killed and restarted: "
        f"{len(faults.backend_down)}")
    out(f"  floods: {floods}")
    out(f"  slowloris: connections cut by the proxy {slow_cut} (of 200 each)")
    out(f"  listeners added at runtime answer: {listener_checks}")
    out("resources (median after warm-up -> median of the last tenth):")
    growth = {}
    after = [x for x in samples if x["t"] >= max(warm, duration * 0.2)]
    if len(after) >= 10:
        tenth = max(3, len(after) // 10)
        for key, unit in (("master_rss", "KiB"), ("workers_rss", "KiB"), ("master_fds", "fds"),
                          ("workers_fds", "fds")):
            first = statistics.median(x[key] for x in after[:tenth])
            last = statistics.median(x[key] for x in after[-tenth:])
            growth[key] = (last - first) / first if first else 0.0
            peak = max(x[key] for x in samples)
            out(f"  {key}: {first:.0f} -> {last:.0f} {unit} ({growth[key] * 100:+.1f}%), peak {peak}")
            if unit == "fds" and last - first <= FD_NOISE:
                growth[key] = 0.0  # within what the connections open at that instant explain
    lifetimes = _growth_in_a_lifetime(samples)
    for pid, (first, last, seconds) in sorted(lifetimes.items(), key=lambda kv: -kv[1][1] / kv[1][0])[:3]:
        out(f"  process {pid}: RSS {first} -> {last} KiB ({(last - first) / first * 100:+.1f}%) over "
            f"{seconds:.0f} s of its life")
    out("checks:")
    check(causes["unexplained"] == 0, f"{causes['unexplained']} failed requests not caused by a "
                                      "killed backend, a killed worker or a flood's 503")
    check(changes.applied == CHANGES and not changes.refused, f"{changes.applied}/{CHANGES} changes applied")
    check(upgrades == UPGRADES and not failed_upgrades, f"{upgrades - failed_upgrades}/{UPGRADES} upgrades")
    check(final == expected, "final state dump equals the expected state")
    if final != expected:
        for key in sorted(set(final) | set(expected)):
            if final.get(key) != expected.get(key):
                out(f"    differs: {key}")
    check(bool(growth) and all(g <= 0.10 for g in growth.values()),
          f"RSS of master and workers grew by 10% at most after warm-up, open fds by 10% or by "
          f"{FD_NOISE} at most (the connections a sample catches open)")
    worst = max(((last - first) / first for first, last, _ in lifetimes.values()), default=None)
    check(worst is not None and worst <= 0.10,
          f"RSS of every process grew by 10% at most within its own life (worst "
          f"{'unmeasured: no process lived 60 s' if worst is None else f'{worst * 100:+.1f}%'}): upgrades and kills replace "
          "processes, so the medians above alone would hide a leak")
    check(all(status == 404 for status in listener_checks), "the listeners added at runtime serve")
    out(f"soak: {len(failed)} failed checks")
    (report_dir / "soak-report.txt").write_text("\n".join(lines) + "\n")
    (report_dir / "soak-samples.json").write_text(json.dumps(
        {"samples": samples, "events": faults.events,
         "throughput": _throughput(clients, duration)}, indent=None))
    plot(report_dir / "soak.png", samples, clients, faults, duration)
    print(f"report: {report_dir / 'soak-report.txt'}, plot: {report_dir / 'soak.png'}")
    return failed


def _growth_in_a_lifetime(samples) -> dict:
    """pid -> (RSS 20-40 s into its life, RSS over its last 10 s, seconds between), for every
    process sampled for at least 60 s: the growth of one process, which a replacement resets."""
    series = collections.defaultdict(list)
    for sample in samples:
        for pid, kib in sample.get("rss_by_pid", {}).items():
            if kib:
                series[pid].append((sample["t"], kib))
    growth = {}
    for pid, points in series.items():
        start, end = points[0][0], points[-1][0]
        if end - start < 60:
            continue
        first = statistics.median(k for t, k in points if start + 20 <= t <= start + 40)
        last = statistics.median(k for t, k in points if t >= end - 10)
        growth[pid] = (first, last, end - start)
    return growth


def _throughput(clients, duration) -> list[int]:
    total = collections.Counter()
    for client in clients:
        total.update(client.recorder.done)
    return [total.get(second, 0) for second in range(int(duration) + 1)]


def plot(path: Path, samples, clients, faults: Faults, duration) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (make soak installs it): no plot")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    per_second = _throughput(clients, duration)
    window = 10
    smooth = [sum(per_second[i:i + window]) / window for i in range(0, len(per_second), window)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    top.plot([i * window for i in range(len(smooth))], smooth, label="requests/s (10 s mean)")
    top.set_ylabel("requests/s")
    bottom.plot([x["t"] for x in samples], [x["master_rss"] / 1024 for x in samples], label="master RSS")
    bottom.plot([x["t"] for x in samples], [x["workers_rss"] / 1024 for x in samples],
                label="largest worker RSS")
    bottom.set_ylabel("MiB")
    bottom.set_xlabel("seconds")
    for t, what in faults.events:
        color = "red" if what.startswith("SIGKILL") else "green" if what.startswith("upgrade") else None
        if color:
            for axis in (top, bottom):
                axis.axvline(t, color=color, alpha=0.3, linewidth=1)
    top.set_title("fault soak: throughput and RSS (green: upgrades, red: SIGKILLed workers)")
    top.legend(loc="lower left")
    bottom.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
