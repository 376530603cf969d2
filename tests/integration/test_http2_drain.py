"""HTTP/2 connections through a soft stop and an upgrade: GOAWAY, the streams in flight finish,
the client moves to a new connection (the new generation) without a failed request."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess

import pytest

from tests.integration.certs import TestCA
from tests.integration.harness import free_port, wait_for
from tests.integration.test_upgrade import master_pid, upgrade

pytestmark = pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp2-client is not installed")


def _start(tmp_path, sozu, backend):
    b = backend("b1")
    ca = TestCA(tmp_path / "pki")
    leaf = ca.issue(["a.test"])
    port = free_port()
    s = sozu(f"""
command_socket = "{tmp_path}/sozu.sock"
pid_file_path = "{tmp_path}/sozu.pid"
worker_count = 1
log_level = "info"
log_access_target = "stdout"
shutdown_grace_period = 10

[[listeners]]
protocol = "https"
address = "127.0.0.1:{port}"

[applications.app]
protocol = "http"
frontends = [ {{ address = "127.0.0.1:{port}", hostname = "a.test", certificate = "{leaf.cert_path}", key = "{leaf.key_path}" }} ]
backends = [ "127.0.0.1:{b.port}" ]
""")
    s.port, s.ca, s.backend = port, ca, b
    return s


def test_soft_stop_sends_goaway_and_the_stream_in_flight_finishes(tmp_path, sozu, backend):
    s = _start(tmp_path, sozu, backend)
    client = subprocess.Popen(["nghttp", "-v", "-H", ":authority: a.test",
                               f"https://127.0.0.1:{s.port}/slow/1.5"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: s.backend.active == 1, what="the request to reach the backend")
        s.signal(signal.SIGTERM)
        out, _ = client.communicate(timeout=20)
    finally:
        if client.poll() is None:
            client.kill()
    assert re.search(r"recv GOAWAY frame .*\n.*error_code=NO_ERROR", out), out
    assert ":status: 200" in out and client.returncode == 0, out
    assert s.wait_exit(20) == 0


def test_an_upgrade_moves_http2_clients_to_the_new_generation_without_a_failed_request(
        tmp_path, sozu, backend):
    """curl sends 30 requests one after the other on one HTTP/2 connection while sozu upgrades:
    the old worker's GOAWAY makes curl open a new connection, to the new worker; none fails."""
    s = _start(tmp_path, sozu, backend)
    url = f"https://a.test:{s.port}/slow/0.2"
    client = subprocess.Popen(
        ["curl", "-sS", "--http2", "--cacert", str(s.ca.path), "--resolve", f"a.test:{s.port}:127.0.0.1",
         "-w", "%{http_code} %{num_connects}\n", *(["-o", "/dev/null"] * 30), *([url] * 30)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: s.backend.requests >= 2, what="curl to be under way")
        old_worker = s.workers()[0]["pid"]
        upgrade(s, master_pid(s))
        out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
    answers = out.split("\n")[:-1]
    assert len(answers) == 30 and all(a.startswith("200 ") for a in answers), out + err
    assert [a.split()[1] for a in answers].count("1") == 2, out  # the first connection, and one more
    assert answers[-1] == "200 0"  # the last requests went on the new connection
    new_worker = s.workers()[0]["pid"]
    assert new_worker != old_worker
    wait_for(lambda: f"WRK-0 {new_worker} 127.0.0.1 app" in s.log(), what="the new worker's access line")
