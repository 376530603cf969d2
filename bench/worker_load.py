"""sozu's workers under load, on 127.0.0.1: where one worker's CPU goes, and how the load
spreads over two.

    .venv/bin/python bench/worker_load.py profile [--scenario small] [--seconds 8]
    .venv/bin/python bench/worker_load.py spread  [--scenario small] [--seconds 8]
    .venv/bin/python bench/worker_load.py idle    [--connections 2000]
    .venv/bin/python bench/worker_load.py cost    [--scenario small] [--seconds 8]
    .venv/bin/python bench/worker_load.py syscalls [--scenario small] [--seconds 8]

Both start a backend nginx (proxybench's configuration and bodies), sozu from this tree and wrk.
`profile` runs one worker (all the load on the process profiled), samples it with `py-spy
record` (PyPI; found next to this interpreter or on PATH) and prints the functions by own and by
inclusive time. `spread` runs two workers and prints, per worker, the connections it accepted,
the requests it served and the CPU it used while wrk ran. `idle` runs one worker and prints its
RSS when idle, then with that many keep-alive client connections idle after one request each.
`cost` runs one worker and prints the CPU it used per request while wrk ran (its own CPU time
over the requests it counted): on a shared machine a steadier figure than requests/s, which
follows what else runs; compare interleaved runs of two trees. `syscalls` runs one worker and
counts its system calls with `strace -c` for half of the load (strace slows the worker down,
not the count of what it calls): per request, a figure that other jobs do not move.
"""
import argparse
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_BENCH = os.path.join(ROOT, "..", "shared", "bench")
sys.path.insert(0, SHARED_BENCH)
sys.path.insert(0, ROOT)

import proxybench  # noqa: E402
from tests.integration.load import cpu_seconds  # noqa: E402

SCENARIOS = {"small": ("/small", 50, False), "64k": ("/64k", 50, False), "close": ("/small", 50, True)}


def wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def worker_pids(master_pid: int, count: int, deadline: float) -> list[int]:
    while time.monotonic() < deadline:
        pids = []
        for task in os.listdir(f"/proc/{master_pid}/task"):
            with open(f"/proc/{master_pid}/task/{task}/children") as f:
                pids += [int(pid) for pid in f.read().split()]
        if len(pids) >= count:
            return sorted(pids)
        time.sleep(0.05)
    raise SystemExit("the master did not start its workers")


def worker_metrics(socket_path: str) -> dict:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(socket_path)
        sock.sendall(json.dumps({"id": "m", "version": 0, "type": "PROXY",
                                 "data": {"type": "METRICS", "data": None}}).encode() + b"\0")
        buf = b""
        while True:
            buf += sock.recv(65536)
            for raw in buf.split(b"\0")[:-1]:
                answer = json.loads(raw)
                if answer.get("id") == "m" and answer.get("status") in ("OK", "ERROR"):
                    return answer["data"]["workers"]


class Stack:
    """Backend nginx + sozu with `workers` workers, stopped by close()."""

    def __init__(self, workers: int):
        self.tmp = tempfile.mkdtemp(prefix="sozu-load-")
        self.procs = []
        prefix = os.path.join(self.tmp, "backend")
        os.makedirs(os.path.join(prefix, "www"))
        os.makedirs(os.path.join(prefix, "tmp"))
        for d in (self.tmp, prefix, os.path.join(prefix, "www")):
            os.chmod(d, 0o755)
        for name, size in proxybench.SIZES.items():
            path = os.path.join(prefix, "www", name)
            with open(path, "wb") as f:
                f.write(b"x" * size)
            os.chmod(path, 0o644)
        backend_port, self.port = proxybench.free_port(), proxybench.free_port()
        conf = os.path.join(prefix, "backend.conf")
        with open(conf, "w") as f:
            f.write(proxybench.BACKEND_CONF.format(prefix=prefix, host="127.0.0.1", port=backend_port,
                                                   user_line=proxybench.user_line()))
        self.procs.append(subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-p", prefix,
                                            "-c", conf, "-e", os.path.join(prefix, "error.log")]))
        with open(os.path.join(SHARED_BENCH, "sozu.toml.tmpl")) as f:
            config = f.read()
        for name, value in (("listen_port", self.port), ("backend_port", backend_port), ("tmpdir", self.tmp)):
            config = config.replace("{%s}" % name, str(value))  # the template's own braces stay
        config = config.replace("worker_count = 2", f"worker_count = {workers}")
        with open(os.path.join(self.tmp, "sozu.toml"), "w") as f:
            f.write(config)
        self.socket_path = os.path.join(self.tmp, "sozu.sock")
        sozu = subprocess.Popen([sys.executable, os.path.join(ROOT, "sozu.py"), "start", "-c",
                                 os.path.join(self.tmp, "sozu.toml")], stdout=subprocess.DEVNULL)
        self.procs.append(sozu)
        wait_port(backend_port, time.monotonic() + 10)
        wait_port(self.port, time.monotonic() + 20)
        self.workers = worker_pids(sozu.pid, workers, time.monotonic() + 20)

    def wrk(self, scenario: str, seconds: int) -> subprocess.Popen:
        path, connections, close = SCENARIOS[scenario]
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{self.port}{path}"]
        if close:
            argv[1:1] = ["-H", "Connection: close"]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def rate(wrk_out: str) -> str:
    return " ".join(line.strip() for line in wrk_out.splitlines() if "Requests/sec" in line)


def summarize(raw: str, top: int = 40) -> str:
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    out = [f"{total} samples", "", "own time:"]
    out += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    out += ["", "inclusive time:"]
    out += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(out)


def profile(scenario: str, seconds: int) -> None:
    py_spy = shutil.which("py-spy", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if py_spy is None:
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    stack = Stack(1)
    try:
        load = stack.wrk(scenario, seconds + 2)
        time.sleep(1)
        raw = os.path.join(stack.tmp, "profile.raw")
        subprocess.run([py_spy, "record", "-p", str(stack.workers[0]), "-d", str(seconds), "-r", "250",
                        "-f", "raw", "-o", raw, "--nonblocking"], check=True, capture_output=True)
        out, _ = load.communicate()
        print(f"# one sozu worker under wrk ({scenario}: {SCENARIOS[scenario]}), py-spy record, {seconds} s")
        print("# wrk:", rate(out))
        with open(raw) as f:
            print(summarize(f.read()))
    finally:
        stack.close()


def spread(scenario: str, seconds: int) -> None:
    stack = Stack(2)
    try:
        before = worker_metrics(stack.socket_path)
        cpu = [cpu_seconds(pid) for pid in stack.workers]
        out, _ = stack.wrk(scenario, seconds).communicate()
        cpu = [cpu_seconds(pid) - was for pid, was in zip(stack.workers, cpu)]
        after = worker_metrics(stack.socket_path)
        print(f"# two sozu workers under wrk ({scenario}: {SCENARIOS[scenario]}), {seconds} s")
        print("# wrk:", rate(out))
        print("worker  accepted  requests")
        for wid, data in sorted(after.items()):
            was = before.get(wid, {})
            print(f"{wid:>6}  {data.get('accepted_connections', 0) - was.get('accepted_connections', 0):>8}"
                  f"  {data.get('requests', 0) - was.get('requests', 0):>8}")
        print("   pid  CPU s")
        for pid, used in zip(stack.workers, cpu):
            print(f"{pid:>6}  {used:5.2f}")
    finally:
        stack.close()


def cost(scenario: str, seconds: int) -> None:
    stack = Stack(1)
    try:
        pid = stack.workers[0]
        stack.wrk(scenario, 1).communicate()  # warm: connections pooled, code paths run once
        before, was = requests_served(stack.socket_path), cpu_seconds(pid)
        out, _ = stack.wrk(scenario, seconds).communicate()
        used, requests = cpu_seconds(pid) - was, requests_served(stack.socket_path) - before
        print(f"# one sozu worker under wrk ({scenario}: {SCENARIOS[scenario]}), {seconds} s; {rate(out)}")
        print(f"{requests} requests, worker CPU {used:.2f} s: {used / requests * 1e6:.1f} us/request")
    finally:
        stack.close()


def requests_served(socket_path: str) -> int:
    return sum(data.get("requests", 0) for data in worker_metrics(socket_path).values())


def syscalls(scenario: str, seconds: int) -> None:
    stack = Stack(1)
    try:
        load = stack.wrk(scenario, seconds)
        time.sleep(1)
        before = requests_served(stack.socket_path)
        traced = subprocess.run(["timeout", "-s", "INT", str(max(seconds // 2, 1)), "strace", "-c", "-f",
                                 "-p", str(stack.workers[0])], capture_output=True, text=True)
        requests = requests_served(stack.socket_path) - before
        out, _ = load.communicate()
        print(f"# one sozu worker under wrk ({scenario}: {SCENARIOS[scenario]}), strace -c for "
              f"{max(seconds // 2, 1)} s of {seconds} s: {requests} requests")
        print("calls/request  errors/request  syscall")
        for line in traced.stderr.splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                calls, errors = int(fields[3]), int(fields[4]) if len(fields) == 6 else 0
                print(f"{calls / requests:13.2f}  {errors / requests:14.2f}  {fields[-1]}")
    finally:
        stack.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def idle(connections: int) -> None:
    stack = Stack(1)
    clients = []
    try:
        pid = stack.workers[0]
        request = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        warm = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
        warm.sendall(request)
        warm.recv(65536)
        warm.close()
        time.sleep(0.5)
        empty = rss_kib(pid)
        for _ in range(connections):
            client = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
            client.sendall(request)
            clients.append(client)
        for client in clients:  # each answer is one small read
            if b"200 OK" not in client.recv(65536):
                raise SystemExit("a request failed")
        time.sleep(1)
        loaded = rss_kib(pid)
        print(f"# one sozu worker, {connections} idle keep-alive client connections (one request each)")
        print(f"idle worker RSS: {empty / 1024:.1f} MiB")
        print(f"with the idle connections: {loaded / 1024:.1f} MiB, "
              f"{(loaded - empty) / connections:.1f} KiB per connection")
    finally:
        for client in clients:
            client.close()
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("profile", "spread", "idle", "cost", "syscalls"))
    parser.add_argument("--scenario", default="small", choices=SCENARIOS)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    if args.mode == "idle":
        idle(args.connections)
    else:
        modes = {"profile": profile, "spread": spread, "cost": cost, "syscalls": syscalls}
        modes[args.mode](args.scenario, args.seconds)


if __name__ == "__main__":
    main()
