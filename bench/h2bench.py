#!/usr/bin/env python3
"""HTTP/2 benchmark on loopback only: h2load against sozu and against nginx (`listen ... http2`) in
front of the same backend (an nginx serving a 100-byte /small), then the memory one open
HTTP/2 connection costs each of them.

  .venv/bin/python bench/h2bench.py [--duration 10] [--connections 10] [--rounds 2]

Scenarios: 1 and 100 concurrent streams per connection (h2load -m 1 / -m 100). Both proxies
get the same number of workers (--workers, 2). Each round runs sozu then nginx; the figures are
medians over rounds. Memory: --idle connections (TLS, HTTP/2 preface, one answered request),
left open, and the workers' total RSS before and after, divided by their number; measured on
the first round's fresh proxy, before its load.
Prints a table; ratios are sozu / nginx. Quote ratios, and say how quiet the machine was.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.load import cpu_seconds, rss_kib  # noqa: E402

HOST = "127.0.0.1"  # the only address this script talks to


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def certificate(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test"], check=True, capture_output=True)
    return cert, key


def nginx(tmp: Path, name: str, body: str) -> subprocess.Popen:
    prefix = tmp / name
    (prefix / "logs").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log warn;\n{body}")
    return subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(conf)], start_new_session=True)


def backend(tmp: Path, port: int) -> subprocess.Popen:
    (tmp / "www").mkdir()
    (tmp / "www" / "small").write_bytes(b"s" * 100)
    for path in (tmp, tmp / "www", tmp / "www" / "small"):  # nginx's workers run unprivileged
        path.chmod(0o755)
    return nginx(tmp, "backend", f"""worker_processes 1;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000;
  server {{ listen {HOST}:{port} reuseport; root {tmp}/www; }} }}
""")


def front_nginx(tmp: Path, port: int, backend_port: int, cert: Path, key: Path, workers: int) -> subprocess.Popen:
    return nginx(tmp, f"front-{port}", f"""worker_processes {workers};
events {{ worker_connections 4096; }}
http {{ access_log off;
  keepalive_requests 10000000;  # nginx ends a connection after 1,000 requests; h2load -D opens no new one
  upstream b {{ server {HOST}:{backend_port}; keepalive 64; }}
  server {{ listen {HOST}:{port} ssl http2; ssl_certificate {cert}; ssl_certificate_key {key};
    http2_max_concurrent_streams 100;
    location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")


def front_sozu(tmp: Path, port: int, backend_port: int, cert: Path, key: Path, workers: int) -> subprocess.Popen:
    directory = tmp / f"sozu-{port}"
    directory.mkdir()
    config = directory / "sozu.toml"
    config.write_text(f"""
command_socket = "{directory}/sozu.sock"
worker_count = {workers}
max_connections = 4000
log_level = "warning"
log_access_target = "off"

[[listeners]]
protocol = "https"
address = "{HOST}:{port}"

[applications.bench]
protocol = "http"
frontends = [ {{ address = "{HOST}:{port}", hostname = "bench.test", certificate = "{cert}", key = "{key}" }} ]
backends = [ "{HOST}:{backend_port}" ]
""")
    return subprocess.Popen([sys.executable, str(ROOT / "sozu.py"), "start", "-c", str(config)],
                            cwd=str(directory), start_new_session=True,
                            stdout=open(directory / "sozu.log", "wb"), stderr=subprocess.STDOUT)


def protocol_cost(exchanges: int = 3000) -> float:
    """µs of CPU that sozu's sans-IO HTTP/2 part takes for one small GET on an open connection:
    the client's HEADERS read (h2, then sozu.http2.protocol's checks and its HTTP/1.1 head), the
    session's HTTP/1.1 response translated back (ResponseTranslator) and sent as HEADERS and
    DATA (h2, HPACK). No socket, no TLS, no session: the floor of what HTTP/2 adds per request."""
    import h2.config
    import h2.connection
    import h2.events
    from sozu.http2.protocol import Http2Protocol, Request, ResponseTranslator

    server = Http2Protocol()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    server.receive(client.data_to_send(), 0.0)
    client.receive_data(server.data_to_send())
    response = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 04 Dec 2026 20:00:00 GMT\r\n"
                b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\n"
                b"Last-Modified: Fri, 04 Dec 2026 19:00:00 GMT\r\nETag: \"6751a2b0-64\"\r\n"
                b"Accept-Ranges: bytes\r\nSozu-Id: 0123456789ab-%x\r\n\r\n" + b"s" * 100)  # an id per request
    spent = 0.0
    for stream_id in range(1, 2 * exchanges, 2):
        client.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/small"),
                                        (b":authority", b"bench.test"), (b"user-agent", b"h2load nghttp2/1.52.0")],
                            end_stream=True)
        data = client.data_to_send()
        started = time.process_time()
        [request] = [a for a in server.receive(data, 0.0) if isinstance(a, Request)]
        for part in ResponseTranslator(request.start.method).feed(response % stream_id):
            if part[0] == "headers":
                server.send_headers(stream_id, part[1], part[2])
            else:
                server.send_data(stream_id, part[1], part[2])
        answer = server.data_to_send()
        spent += time.process_time() - started
        for event in client.receive_data(answer):  # the client's side is not counted
            if isinstance(event, h2.events.DataReceived):  # its WINDOW_UPDATE goes with the next request
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    return spent / exchanges * 1e6


def h2load(port: int, streams: int, connections: int, duration: int) -> tuple[float, int]:
    done = subprocess.run(["h2load", "-D", str(duration), "--warm-up-time", "1", "-c", str(connections),
                           "-m", str(streams), "-t", "1", "-H", ":authority: bench.test",
                           f"https://{HOST}:{port}/small"], capture_output=True, text=True,
                          timeout=duration + 60)
    match = re.search(r"finished in .*?, ([0-9.]+) req/s", done.stdout)
    failed = re.search(r"requests: .* (\d+) failed, (\d+) errored", done.stdout)
    if match is None or failed is None:
        raise SystemExit(f"h2load failed:\n{done.stdout}\n{done.stderr}")
    if int(failed.group(1)) or int(failed.group(2)):
        print(f"  warning: {failed.group(0)}", file=sys.stderr)
    succeeded = re.search(r"requests: .*? (\d+) succeeded", done.stdout)
    return float(match.group(1)), int(succeeded.group(1))


def memory_per_connection(port: int, pids, count: int) -> float:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    import h2.connection  # the project's own dependency: run this with its virtualenv's python

    time.sleep(1)
    before = sum(map(rss_kib, pids()))
    kept = []
    for _ in range(count):
        sock = context.wrap_socket(socket.create_connection((HOST, port), timeout=10), server_hostname="bench.test")
        client = h2.connection.H2Connection()
        client.initiate_connection()
        client.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":path", "/small"),
                                (":authority", "bench.test")], end_stream=True)
        sock.sendall(client.data_to_send())
        answered = b""
        while b"sssss" not in answered:  # the body arrived: the stream was served
            data = sock.recv(65536)
            if not data:
                raise SystemExit("a connection closed before its answer")
            answered += data
        kept.append((sock, client))
        if len(kept) % 50 == 0:
            print(f"  {len(kept)} connections open", file=sys.stderr)
    time.sleep(1)
    after = sum(map(rss_kib, pids()))
    for sock, _ in kept:
        sock.close()
    return (after - before) / count


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle", type=int, default=200)
    args = parser.parse_args()
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="h2bench-") as name:
        tmp = Path(name)
        cert, key = certificate(tmp)
        backend_port = free_port()
        back = backend(tmp, backend_port)
        try:
            wait_port(backend_port)
            for round_number in range(args.rounds):
                for proxy, start in (("sozu", front_sozu), ("nginx", front_nginx)):
                    port = free_port()
                    process = start(tmp, port, backend_port, cert, key, args.workers)
                    try:
                        wait_port(port)
                        time.sleep(1)
                        def pids(process=process):
                            workers = children(process.pid)
                            return workers + [w for p in workers for w in children(p)]
                        if round_number == 0:
                            # On a fresh proxy, before any load: after one, the heaps of both
                            # have grown to the load's size and hold idle connections for free.
                            kib = memory_per_connection(port, pids, args.idle)
                            results.setdefault((proxy, "KiB per idle h2 connection"), []).append(kib)
                        for streams in (1, 100):
                            cpu_before = sum(map(cpu_seconds, [process.pid, *pids()]))
                            rate, succeeded = h2load(port, streams, args.connections, args.duration)
                            cpu = sum(map(cpu_seconds, [process.pid, *pids()])) - cpu_before
                            results.setdefault((proxy, f"{streams} stream(s)/conn"), []).append(rate)
                            results.setdefault((proxy, f"{streams} stream(s): CPU us/req"), []).append(
                                cpu / max(succeeded, 1) * 1e6)
                            print(f"round {round_number + 1} {proxy} -m {streams}: {rate:.0f} req/s", file=sys.stderr)
                    finally:
                        stop(process)
        finally:
            stop(back)
    print(f"\nh2load -c {args.connections} -t 1 -D {args.duration}, {args.workers} workers each, "
          f"{args.rounds} rounds (medians), loopback, 100-byte responses")
    print(f"{'measure':32} {'sozu':>10} {'nginx':>10} {'ratio':>7}")
    for measure in ("1 stream(s)/conn", "100 stream(s)/conn", "1 stream(s): CPU us/req",
                    "100 stream(s): CPU us/req", "KiB per idle h2 connection"):
        sozu = statistics.median(results[("sozu", measure)])
        other = statistics.median(results[("nginx", measure)])
        print(f"{measure:32} {sozu:10.1f} {other:10.1f} {sozu / other if other else float('nan'):6.2f}x")
    print(f"\nsozu's sans-IO HTTP/2 part alone (h2, HPACK and its glue, no socket, no TLS, no session): "
          f"{protocol_cost():.1f} us of CPU per small request")


if __name__ == "__main__":
    main()
