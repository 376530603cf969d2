"""Upgrade without downtime (docs/architecture.md, "Upgrade"), with real masters, workers and clients.

After an upgrade, `Sozu.process` is the first master, which has exited: the current master is
the one LIST_WORKERS names (and the pid file). Every generation is spawned in the first master's
process group, which the harness kills at the end.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time

from tests.integration.harness import free_port, http_config, wait_for
from tests.integration.load import Load, LoadClient, alive, group_members, listening_inode


def _config(tmp_path, port, backends, **kwargs) -> str:
    extra = f'pid_file_path = "{tmp_path}/sozu.pid"\n' + kwargs.pop("extra", "")
    return http_config(tmp_path, port, backends, extra=extra, **kwargs)


def master_pid(s) -> int:
    answer = s.command({"id": "m", "version": 0, "type": "LIST_WORKERS"}, timeout=5)
    return next(w["pid"] for w in answer["data"]["workers"] if w["id"] == "master")


def open_connections(s) -> int:
    """Client connections the workers hold, from their METRICS."""
    workers = s.order("METRICS")["data"]["workers"]
    return sum(w.get("active_connections", 0) for w in workers.values())


def pid_file(s) -> int:
    return int((s.dir / "sozu.pid").read_text())


def dump(s) -> dict:
    answer = s.command({"id": "dump", "version": 0, "type": "DUMP_STATE"})
    assert answer["status"] == "OK", answer
    return answer["data"]


def upgrade(s, old_master: int) -> int:
    """`sozuctl upgrade`; returns the new master once the old one has exited. sozuctl waits 5 s
    by default, which a loaded machine can exceed while the new workers boot: hence --timeout."""
    result = s.ctl("--timeout=40000", "upgrade")
    assert result.returncode == 0, result.stdout + result.stderr + _not_access(s.log())[-4000:]
    new = json.loads(s.ctl("--json", "status").stdout)["data"]["workers"]
    new_master = next(w["pid"] for w in new if w["id"] == "master")
    assert new_master != old_master
    wait_for(lambda: not alive(old_master), 10, what=f"the old master {old_master} to exit")
    return new_master


def _not_access(log: str) -> str:
    return "\n".join(line for line in log.splitlines() if " ACCESS " not in line)


def get(port: int, path: str = "/", host: str = "localhost", timeout: float = 5.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path, headers={"Host": host})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body, response


def handed_over(pid: int) -> dict:
    """What SOZU_LISTENER_FDS named in a master's environment: address -> the socket that fd is
    (/proc/<pid>/environ keeps the environment a process was started with)."""
    from sozu.listeners import ENV_FDS, decode_fds
    with open(f"/proc/{pid}/environ", "rb") as file:
        variables = dict(v.split(b"=", 1) for v in file.read().split(b"\0") if b"=" in v)
    fds = decode_fds(variables[ENV_FDS.encode()].decode())
    return {address: os.readlink(f"/proc/{pid}/fd/{fd}") for address, fd in fds.items()}


def runtime_changes(s, b2_port: int) -> None:
    """Changes made through the command socket only: the TOML file knows nothing of them."""
    for kind, data in [
        ("ADD_APPLICATION", {"app_id": "app2", "sticky_session": False, "https_redirect": False,
                             "proxy_protocol": None, "load_balancing_policy": "RoundRobin"}),
        ("ADD_HTTP_FRONT", {"app_id": "app2", "address": f"127.0.0.1:{s.port}", "hostname": "two.example",
                            "path_begin": ""}),
        ("ADD_BACKEND", {"app_id": "app2", "backend_id": "two-0", "address": f"127.0.0.1:{b2_port}",
                         "sticky_id": None, "load_balancing_parameters": {"weight": 100}, "backup": False}),
    ]:
        answer = s.order(kind, data)
        assert answer["status"] == "OK", answer


def test_upgrades_under_load_fail_no_request(tmp_path, sozu, backend):
    """3 upgrades while keep-alive, new-connection and slow clients run: 0 failed requests; the
    state (runtime changes included) is the same after; the pid file and the command socket
    follow the new master; the listening socket is the same one throughout."""
    b1, b2 = backend("b1"), backend("b2")
    port = free_port()
    s = sozu(_config(tmp_path, port, [b1.port]))
    s.port = port
    runtime_changes(s, b2.port)
    port2 = free_port()  # a listener that only the command socket ever heard of
    for kind, data in [("ADD_HTTP_LISTENER", {"front": f"127.0.0.1:{port2}"}),
                       ("ACTIVATE_LISTENER", {"front": f"127.0.0.1:{port2}", "proxy": "HTTP"}),
                       ("ADD_HTTP_FRONT", {"app_id": "app2", "address": f"127.0.0.1:{port2}",
                                           "hostname": "two.example", "path_begin": ""})]:
        assert s.order(kind, data)["status"] == "OK"
    before = dump(s)
    inodes = (listening_inode(port), listening_inode(port2))
    command_socket = os.stat(s.socket_path).st_ino
    first = master = master_pid(s)
    clients = (LoadClient(port, name="keep-alive"),
               LoadClient(port, keep_alive=False, name="new-connection"),
               LoadClient(port, host="two.example", paths=("/slow/0.3",), name="slow keep-alive"))
    with Load(*clients) as load:
        time.sleep(0.5)
        for _ in range(3):
            master = upgrade(s, master)
            assert pid_file(s) == master
            assert os.getpgid(master) == first  # the harness's killpg reaches every generation
            assert handed_over(master) == {f"127.0.0.1:{port}": f"socket:[{inodes[0]}]",
                                           f"127.0.0.1:{port2}": f"socket:[{inodes[1]}]"}
            time.sleep(0.5)
    print(load.summary())
    assert load.failures == [], load.summary() + "\n" + "\n".join(load.failures[:20])
    assert load.ok > 100, load.summary()
    assert all(c.ok > 3 for c in clients), load.summary()
    assert dump(s) == before
    assert (listening_inode(port), listening_inode(port2)) == inodes  # handed over, never re-bound
    assert os.stat(s.socket_path).st_ino == command_socket           # the same socket file
    assert s.process.wait(5) == 0          # the first master exited, cleanly
    for p in (port, port2):
        status, body, _ = get(p, host="two.example")
        assert status == 200 and json.loads(body)["backend"] == "b2"


def test_in_flight_requests_finish_and_idle_connections_close(tmp_path, sozu, backend):
    """The old generation answers what it accepted (with Connection: close), closes its idle
    keep-alive connections, and a request that arrives meanwhile is answered with
    Connection: close."""
    b = backend("b1")
    port = free_port()
    # The partial head waits through the whole upgrade: no 408 meanwhile, however slow the machine.
    s = sozu(_config(tmp_path, port, [b.port]).replace("request_timeout = 3", "request_timeout = 30"))
    results = {}

    def slow():
        status, body, response = get(port, "/slow/4", timeout=15)
        results["slow"] = (status, response.getheader("Connection"))

    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    idle.request("GET", "/", headers={"Host": "localhost"})
    first = idle.getresponse()
    first.read()
    assert first.status == 200 and not first.will_close
    partial = socket.create_connection(("127.0.0.1", port), timeout=5)
    partial.sendall(b"GET /late HTTP/1.1\r\nHost: local")  # a request head on its way
    thread = threading.Thread(target=slow)
    thread.start()
    # The old generation holds all three before the upgrade: the slow request is at the backend,
    # and the partial head's connection is accepted (a connection still in the backlog would go
    # to the new generation).
    wait_for(lambda: b.active == 1 and open_connections(s) == 3, 10, what="the old workers to hold all three")
    old_master = master_pid(s)
    old_workers = [w["pid"] for w in s.workers()]
    assert s.ctl("--timeout=40000", "upgrade").returncode == 0
    partial.sendall(b"host\r\n\r\n")
    answer = _until_close(partial)
    assert answer.startswith(b"HTTP/1.1 200") and b"\r\nConnection: close\r\n" in answer, answer
    idle.sock.settimeout(3)
    assert idle.sock.recv(65536) == b""  # closed by the draining worker while idle
    thread.join(10)
    assert results["slow"] == (200, "close")
    wait_for(lambda: not any(alive(pid) for pid in old_workers + [old_master]), 10,
             what="the old generation to exit")
    assert get(port)[0] == 200


def _until_close(sock) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_drain_is_bounded_by_the_grace_period(tmp_path, sozu, backend):
    b = backend("b1")
    port = free_port()
    s = sozu(_config(tmp_path, port, [b.port]).replace("shutdown_grace_period = 5", "shutdown_grace_period = 1"))
    outcome = {}

    def too_slow():
        try:
            outcome["status"] = get(port, "/slow/6", timeout=10)[0]
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=too_slow)
    thread.start()
    wait_for(lambda: b.active == 1, 10, what="the slow request to reach the backend")
    old_master = master_pid(s)
    assert s.ctl("--timeout=40000", "upgrade").returncode == 0
    started = time.monotonic()  # the OK: the old generation drains from now on
    wait_for(lambda: not alive(old_master), 6, what="the old master to exit")
    elapsed = time.monotonic() - started
    assert elapsed < 3, elapsed  # grace period (1 s), then the connection is closed
    thread.join(10)
    assert "error" in outcome, outcome  # cut at the end of the grace period
    assert get(port)[0] == 200


def test_a_failed_upgrade_leaves_the_old_generation_serving(tmp_path, sozu, backend):
    """The new master dies (the file on disk no longer loads): ERROR with the reason, the old
    generation serves on, takes changes again, and a later upgrade succeeds."""
    b = backend("b1")
    port = free_port()
    s = sozu(_config(tmp_path, port, [b.port]))
    s.port = port
    master = master_pid(s)
    workers = s.workers()
    good = s.config_path.read_text()
    s.config_path.write_text(good + "\nworker_count_typo = 3\n")
    answer = s.command({"id": "up", "version": 0, "type": "UPGRADE_MASTER"}, timeout=40)
    assert answer["status"] == "ERROR"
    assert "exited before being ready (exit code 1)" in answer["message"], answer
    assert master_pid(s) == master and pid_file(s) == master
    assert s.workers() == workers
    assert get(port)[0] == 200
    runtime_changes(s, b.port)  # state changes are accepted again
    assert get(port, host="two.example")[0] == 200
    s.config_path.write_text(good)
    before = dump(s)
    new = upgrade(s, master)
    assert pid_file(s) == new and dump(s) == before
    assert get(port, host="two.example")[0] == 200


def test_a_second_upgrade_is_refused_while_one_is_in_progress(tmp_path, sozu, backend):
    b = backend("b1")
    port = free_port()
    s = sozu(_config(tmp_path, port, [b.port]))
    master = master_pid(s)
    with socket.socket(socket.AF_UNIX) as first, socket.socket(socket.AF_UNIX) as second:
        first.settimeout(20)
        second.settimeout(20)
        first.connect(s.socket_path)
        first.sendall(b'{"id":"u1","version":0,"type":"UPGRADE_MASTER"}\0'
                      b'{"id":"u2","version":0,"type":"UPGRADE_MASTER"}\0')
        second.connect(s.socket_path)
        second.sendall(b'{"id":"u3","version":0,"type":"UPGRADE_MASTER"}\0')
        third = _answers(second, {"u3"})
        answers = _answers(first, {"u1", "u2"})
    assert answers["u2"]["status"] == "ERROR" and "already in progress" in answers["u2"]["message"]
    assert third["u3"]["status"] == "ERROR" and "already in progress" in third["u3"]["message"]
    assert answers["u1"]["status"] == "OK", answers
    new = answers["u1"]["data"]["pid"]
    wait_for(lambda: not alive(master), 10, what="the old master to exit")
    assert master_pid(s) == new
    assert len(s.workers()) == 2  # one new generation, not two


def _answers(sock, ids: set) -> dict:
    buf, final = b"", {}
    while set(final) != ids:
        data = sock.recv(65536)
        assert data, f"connection closed before answers for {ids - set(final)}"
        buf += data
        while b"\0" in buf:
            raw, buf = buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer["status"] in ("OK", "ERROR"):
                final[answer["id"]] = answer
    return final


def test_sigusr2_upgrades_and_the_last_generation_removes_the_files(tmp_path, sozu, backend):
    b = backend("b1")
    port = free_port()
    s = sozu(_config(tmp_path, port, [b.port]))
    master = master_pid(s)
    s.signal(signal.SIGUSR2)
    try:
        new = wait_for(lambda: master_pid(s) != master and master_pid(s), 15, what="a new master")
    except AssertionError:
        raise AssertionError(s.log()[-4000:]) from None
    wait_for(lambda: not alive(master), 10, what="the old master to exit")
    assert s.process.wait(5) == 0
    # the old generation left the files to the new one
    assert os.path.exists(s.socket_path) and pid_file(s) == new
    assert get(port)[0] == 200
    assert s.ctl("shutdown").returncode == 0
    wait_for(lambda: not group_members(s.process.pid), 15, what="every process to exit")
    assert not os.path.exists(s.socket_path)
    assert not (tmp_path / "sozu.pid").exists()


def test_upgrade_one_worker(tmp_path, sozu, backend):
    """`sozuctl upgrade --worker 0`: a new process takes the slot, the old one finishes what it
    serves and exits; the other worker is untouched."""
    b = backend("b1")
    port = free_port()
    s = sozu(_config(tmp_path, port, [b.port], worker_count=1))
    (old,) = s.workers()
    result = {}

    def slow():
        status, _, response = get(port, "/slow/4", timeout=15)
        result["slow"] = (status, response.getheader("Connection"))

    thread = threading.Thread(target=slow)
    thread.start()
    wait_for(lambda: b.active == 1, 10, what="the slow request to reach the backend through the old worker")
    out = s.ctl("--timeout=40000", "upgrade", "--worker", "0")
    assert out.returncode == 0, out.stdout + out.stderr
    running = [w for w in s.workers() if w["state"] == "running"]
    assert [w["id"] for w in running] == [0] and running[0]["pid"] != old["pid"]
    assert running[0]["restarts"] == old["restarts"] + 1
    thread.join(10)
    assert result["slow"] == (200, "close")
    wait_for(lambda: not alive(old["pid"]), 10, what="the old worker to exit")
    assert get(port)[0] == 200
    assert [w["pid"] for w in s.workers()] == [running[0]["pid"]]
