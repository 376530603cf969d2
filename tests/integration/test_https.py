"""HTTPS with real processes and real clients: openssl s_client, curl, Python's ssl module.

Certificates come from a test CA made at test time (tests/integration/certs.py)."""
from __future__ import annotations

import json
import os
import pwd
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest

from sozu import proxy_protocol
from tests.integration.certs import TestCA, key_pem, new_key
from tests.integration.harness import Backend, Sozu, free_port, on_each_worker

OPENSSL = "openssl"


def s_client(port: int, *args: str, servername: str | None = None, data: bytes = b"") -> str:
    command = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *args]
    command += ["-servername", servername] if servername else ["-noservername"]
    done = subprocess.run(command, input=data, capture_output=True, timeout=15)
    return (done.stdout + done.stderr).decode("utf-8", "replace")


def subject_cn(output: str) -> str | None:
    match = re.search(r"^subject=.*?CN\s*=\s*([^,\s/]+)", output, re.M)
    return match.group(1) if match else None


def curl(port: int, host: str, path: str, ca_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(ca_path),
                           "--resolve", f"{host}:{port}:127.0.0.1", *args,
                           f"https://{host}:{port}{path}"],
                          capture_output=True, text=True, timeout=15)


def client_context(ca) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.path))


def peer_serial(port: int, ca, server_name: str) -> int:
    """The serial number of the certificate a new handshake gets."""
    from cryptography import x509
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with client_context(ca).wrap_socket(raw, server_hostname=server_name) as tls_sock:
            return x509.load_der_x509_certificate(tls_sock.getpeercert(binary_form=True)).serial_number


def https_get(tls_sock, host: str, path: str = "/", close: bool = False) -> tuple[bytes, dict]:
    """One request on an open TLS socket; (status line, echo JSON)."""
    tls_sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n".encode())
    reader = tls_sock.makefile("rb")
    status = reader.readline()
    length = 0
    while True:
        line = reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, json.loads(reader.read(length))


# --- one sozu for the module --------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("https")
    ca = TestCA(tmp / "pki")
    default = ca.issue(["default.test"])
    a = ca.issue(["a.test"])
    inter = ca.intermediate()
    w = inter.issue(["*.w.test"], key_type="rsa")
    backend = Backend("web")
    port, http_port, proxy_port = free_port(), free_port(), free_port()
    config = f"""
command_socket = "{tmp}/sozu.sock"
worker_count = 2
max_connections = 500
log_level = "info"
log_access_target = "stdout"
front_timeout = 10
back_timeout = 5
connect_timeout = 2
request_timeout = 1

[[listeners]]
protocol = "https"
address = "127.0.0.1:{port}"

[[listeners]]
protocol = "http"
address = "127.0.0.1:{http_port}"

[[listeners]]
protocol = "https"
address = "127.0.0.1:{proxy_port}"
expect_proxy = true
tls_versions = ["TLSv1.3"]

[applications.web]
protocol = "http"
frontends = [
  {{ address = "127.0.0.1:{port}", hostname = "default.test", certificate = "{default.cert_path}", key = "{default.key_path}" }},
  {{ address = "127.0.0.1:{port}", hostname = "a.test", certificate = "{a.cert_path}", key = "{a.key_path}" }},
  {{ address = "127.0.0.1:{port}", hostname = "*.w.test", certificate = "{w.cert_path}", key = "{w.key_path}", certificate_chain = "{w.chain_path}" }},
  {{ address = "127.0.0.1:{proxy_port}", hostname = "a.test", certificate = "{a.cert_path}", key = "{a.key_path}" }},
]
backends = [ "127.0.0.1:{backend.port}" ]

[applications.secure]
protocol = "http"
https_redirect = true
frontends = [ {{ address = "127.0.0.1:{http_port}", hostname = "redir.test" }} ]
backends = [ "127.0.0.1:{backend.port}" ]
"""
    sozu = Sozu(tmp, config).start()
    yield {"sozu": sozu, "port": port, "http_port": http_port, "proxy_port": proxy_port, "ca": ca,
           "inter": inter, "default": default, "a": a, "w": w, "tmp": tmp}
    sozu.stop()
    backend.stop()


# --- serving --------------------------------------------------------------------------------------

def test_curl_with_the_test_ca_gets_forwarded_proto_and_port(env):
    done = curl(env["port"], "a.test", "/hello?x=1", env["ca"].path)
    assert done.returncode == 0, done.stderr
    received = json.loads(done.stdout)
    headers = {k.lower(): v for k, v in received["headers"]}
    assert received["path"] == "/hello?x=1"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-port"] == str(env["port"])
    assert headers["x-forwarded-for"] == "127.0.0.1"
    # A wildcard certificate with its intermediate: curl verifies the whole chain.
    done = curl(env["port"], "api.w.test", "/", env["ca"].path, "-o", "/dev/null", "-w", "%{http_code}")
    assert done.returncode == 0 and done.stdout == "200", (done.stdout, done.stderr)


def test_large_bodies_cross_tls_byte_exact_both_ways(env, tmp_path):
    """Large bodies are copied through the worker's large buffers: over TLS too."""
    import hashlib
    upload = tmp_path / "upload"
    upload.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    done = curl(env["port"], "a.test", "/upload", env["ca"].path, "--data-binary", f"@{upload}")
    assert done.returncode == 0, done.stderr
    received = json.loads(done.stdout)
    assert received["body_length"] == upload.stat().st_size
    assert received["body_sha256"] == hashlib.sha256(upload.read_bytes()).hexdigest()
    size = 5 * 1024 * 1024 + 3
    done = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(env["ca"].path),
                           "--resolve", f"a.test:{env['port']}:127.0.0.1",
                           f"https://a.test:{env['port']}/size/{size}"], capture_output=True, timeout=15)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"x" * size


@pytest.mark.parametrize("server_name,expected", [
    ("a.test", "a.test"),
    ("A.Test", "a.test"),
    ("api.w.test", "*.w.test"),
    ("deep.api.w.test", "default.test"),
    ("unknown.test", "default.test"),
    (None, "default.test"),
])
def test_sni_picks_exact_then_wildcard_then_default(env, server_name, expected):
    assert subject_cn(s_client(env["port"], servername=server_name)) == expected


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_tls10_and_tls11_are_refused(env, flag):
    out = s_client(env["port"], flag, "-cipher", "DEFAULT:@SECLEVEL=0", servername="a.test")
    assert "alert protocol version" in out or "unsupported protocol" in out, out
    assert not re.search(r"Cipher is (?!\(NONE\))", out), out


def test_tls13_and_tls12_are_accepted_with_alpn(env):
    out = s_client(env["port"], "-tls1_3", "-alpn", "http/1.1,h2", servername="a.test")
    assert "New, TLSv1.3, Cipher is TLS_" in out, out
    assert "ALPN protocol: h2" in out, out  # the server's preference
    out = s_client(env["port"], "-tls1_3", "-alpn", "http/1.1", servername="a.test")
    assert "ALPN protocol: http/1.1" in out, out
    out = s_client(env["port"], "-tls1_2", servername="api.w.test")
    assert re.search(r"New, TLSv1.2, Cipher is ECDHE-RSA-(AES\d+-GCM|CHACHA20)", out), out


def test_tls_versions_of_the_listener_are_honoured(env):
    """The expect_proxy listener has tls_versions = ["TLSv1.3"]."""
    header = proxy_protocol.encode_v1(("192.0.2.1", 1), ("127.0.0.1", env["proxy_port"]))
    context = client_context(env["ca"])
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", env["proxy_port"]), timeout=5) as raw:
        raw.sendall(header)
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw, server_hostname="a.test")


def test_sessions_are_resumed(env):
    """Each worker has its own session cache, and the kernel may hand consecutive connections
    to alternate workers: offer the last session and the one before, in turn."""
    context = client_context(env["ca"])
    sessions, reused = [], []
    for attempt in range(30):
        session = sessions[-1 - attempt % 2] if len(sessions) >= 2 else (sessions or [None])[-1]
        with socket.create_connection(("127.0.0.1", env["port"]), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="a.test", session=session) as tls_sock:
                https_get(tls_sock, "a.test", "/", close=True)  # the ticket comes after the handshake
                reused.append(tls_sock.session_reused)
                sessions.append(tls_sock.session)
    assert any(reused), reused


def test_https_redirect_answers_plain_http_with_301(env):
    with socket.create_connection(("127.0.0.1", env["http_port"]), timeout=5) as sock:
        sock.sendall(b"GET /some/path?q=1&r=2 HTTP/1.1\r\nHost: redir.test:8080\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 301"), answer
    assert b"\r\nLocation: https://redir.test/some/path?q=1&r=2\r\n" in answer, answer


def test_expect_proxy_on_https_gives_the_real_client(env):
    header = proxy_protocol.encode_v2(("203.0.113.50", 4242), ("127.0.0.1", env["proxy_port"]))
    with socket.create_connection(("127.0.0.1", env["proxy_port"]), timeout=5) as raw:
        raw.sendall(header)
        with client_context(env["ca"]).wrap_socket(raw, server_hostname="a.test") as tls_sock:
            status, received = https_get(tls_sock, "a.test", "/", close=True)
    assert status.startswith(b"HTTP/1.1 200")
    headers = {k.lower(): v for k, v in received["headers"]}
    assert headers["x-forwarded-for"] == "203.0.113.50"
    assert headers["x-forwarded-proto"] == "https"


# --- handshakes never hold a slot -------------------------------------------------------------

def test_a_silent_client_is_closed_at_request_timeout(env):
    """request_timeout = 1 s: the handshake must be over by then."""
    timings = []

    def silent():
        with socket.create_connection(("127.0.0.1", env["port"]), timeout=5) as sock:
            start = time.monotonic()
            assert sock.recv(100) == b""
            timings.append(time.monotonic() - start)

    threads = [threading.Thread(target=silent) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(timings) == 10 and all(0.9 < t < 1.5 for t in timings), timings
    print(f"silent TLS clients closed after {min(timings):.3f}..{max(timings):.3f} s (request_timeout 1 s)")


def test_a_trickling_handshake_is_cut_at_request_timeout_and_others_are_served(env):
    hello = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + bytes(32)
    result = {}

    def trickle():
        with socket.create_connection(("127.0.0.1", env["port"]), timeout=5) as sock:
            start = time.monotonic()
            try:
                for byte in hello:
                    sock.send(bytes([byte]))
                    time.sleep(0.05)
                sock.recv(100)
            except OSError:
                pass
            result["elapsed"] = time.monotonic() - start

    threads = [threading.Thread(target=trickle) for _ in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    assert subject_cn(s_client(env["port"], servername="a.test")) == "a.test"  # not blocked
    for thread in threads:
        thread.join(10)
    assert result["elapsed"] < 1.6, result


# --- certificates at runtime ------------------------------------------------------------------

@pytest.fixture
def runtime_listener(env):
    """An https listener added at runtime, routing rt.test to the web application."""
    sozu, port = env["sozu"], free_port()
    address = f"127.0.0.1:{port}"
    done = sozu.ctl("listener", "https", "add", f"--address={address}")
    assert done.returncode == 0, done.stdout + done.stderr
    for kind, data in (("ACTIVATE_LISTENER", {"front": address, "proxy": "HTTPS"}),
                       ("ADD_HTTPS_FRONT", {"app_id": "web", "address": address, "hostname": "rt.test"})):
        answer = sozu.order(kind, data)
        assert answer["status"] == "OK", answer
    yield port, address
    sozu.order("REMOVE_LISTENER", {"front": address, "proxy": "HTTPS"})


def test_certificates_added_replaced_and_removed_at_runtime(env, runtime_listener):
    sozu, ca = env["sozu"], env["ca"]
    port, address = runtime_listener
    first = ca.issue(["rt.test"])
    done = sozu.ctl("certificate", "add", f"--address={address}", f"--certificate={first.cert_path}",
                    f"--key={first.key_path}")
    assert done.returncode == 0, done.stdout + done.stderr
    done = curl(port, "rt.test", "/", ca.path)
    assert done.returncode == 0 and json.loads(done.stdout)["path"] == "/", done.stderr

    # A keep-alive connection made with the first certificate...
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    kept = client_context(ca).wrap_socket(raw, server_hostname="rt.test")
    assert https_get(kept, "rt.test")[0].startswith(b"HTTP/1.1 200")

    second = ca.issue(["rt.test"])
    start = time.monotonic()
    answer = sozu.order("REPLACE_CERTIFICATE", {"front": address, "old_fingerprint": first.fingerprint,
                                                "new_certificate": second.order_certificate()})
    applied = time.monotonic()
    assert answer["status"] == "OK", answer
    serial = peer_serial(port, ca, "rt.test")
    served = time.monotonic()
    assert serial == second.serial
    # Both workers serve it to every new handshake from now on.
    assert {peer_serial(port, ca, "rt.test") for _ in range(10)} == {second.serial}
    assert served - start < 0.1, f"the replacement was served {served - start:.3f} s after the order"
    print(f"replacement: applied by all workers in {(applied - start) * 1000:.1f} ms, "
          f"served {(served - start) * 1000:.1f} ms after the order")

    # ...is unaffected: same connection, same certificate, still served.
    assert https_get(kept, "rt.test", "/again")[1]["path"] == "/again"
    from cryptography import x509
    assert x509.load_der_x509_certificate(kept.getpeercert(binary_form=True)).serial_number == first.serial
    kept.close()

    # sozuctl replace and remove, by file and by fingerprint.
    third = ca.issue(["rt.test"])
    done = sozu.ctl("certificate", "replace", f"--address={address}", f"--new-certificate={third.cert_path}",
                    f"--new-key={third.key_path}", f"--old-fingerprint={second.fingerprint}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert peer_serial(port, ca, "rt.test") == third.serial
    done = sozu.ctl("certificate", "remove", f"--address={address}", f"--certificate={third.cert_path}")
    assert done.returncode == 0, done.stdout + done.stderr
    out = s_client(port, servername="rt.test")
    assert subject_cn(out) is None and "Cipher is (NONE)" in out, out


def test_bad_certificates_are_refused_with_a_clear_error_and_no_change(env, runtime_listener, tmp_path):
    sozu, ca = env["sozu"], env["ca"]
    _, address = runtime_listener
    good = ca.issue(["bad.test"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    other_key = tmp_path / "other.key"
    other_key.write_text(key_pem(new_key()))
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = ca.issue(["old.test"], not_before=now - datetime.timedelta(days=60),
                       not_after=now - datetime.timedelta(days=1))
    before = sozu.command({"id": "d1", "version": 0, "type": "DUMP_STATE"})["data"]
    for cert, key, message in ((garbage, good.key_path, "not a valid PEM certificate"),
                               (good.cert_path, other_key, "does not match the certificate"),
                               (expired.cert_path, expired.key_path, "certificate: expired on")):
        done = sozu.ctl("certificate", "add", f"--address={address}", f"--certificate={cert}", f"--key={key}")
        assert done.returncode == 1, done.stdout
        assert message in done.stdout + done.stderr, done.stdout + done.stderr
    done = sozu.ctl("certificate", "replace", f"--address={address}", f"--new-certificate={expired.cert_path}",
                    f"--new-key={expired.key_path}", f"--old-fingerprint={env['a'].fingerprint}")
    assert done.returncode == 1 and "expired" in done.stdout + done.stderr
    after = sozu.command({"id": "d2", "version": 0, "type": "DUMP_STATE"})["data"]
    assert after == before


# --- chrooted workers -------------------------------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox is applied only as root (CI runs as root)")
def test_chrooted_workers_serve_certificates_sent_over_the_channel(tmp_path):
    """The certificate's PEM travels in the order: a worker in an empty chroot, as nobody, builds
    its TLS context without reading any file, and serves TCP listeners added at runtime too."""
    import grp
    from tests.integration.test_tcp import TcpBackend, round_trip
    jail = tmp_path / "jail"
    jail.mkdir(mode=0o755)
    try:
        group = grp.getgrnam("nogroup").gr_name
    except KeyError:
        group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    ca = TestCA(tmp_path / "pki")
    leaf = ca.issue(["jail.test"])
    backend, echo = Backend("jailed"), TcpBackend()
    port, tcp_port = free_port(), free_port()
    sozu = Sozu(tmp_path, f"""
command_socket = "{tmp_path}/sozu.sock"
worker_count = 2
log_level = "info"
user = "nobody"
group = "{group}"
chroot = "{jail}"
""").start()
    try:
        for worker in sozu.workers():
            assert os.readlink(f"/proc/{worker['pid']}/root") == str(jail)
        address, tcp_address = f"127.0.0.1:{port}", f"127.0.0.1:{tcp_port}"
        for kind, data in (
                ("ADD_HTTPS_LISTENER", {"front": address}),
                ("ACTIVATE_LISTENER", {"front": address, "proxy": "HTTPS"}),
                ("ADD_APPLICATION", {"app_id": "app"}),
                ("ADD_BACKEND", {"app_id": "app", "backend_id": "b1", "address": f"127.0.0.1:{backend.port}"}),
                ("ADD_HTTPS_FRONT", {"app_id": "app", "address": address, "hostname": "jail.test"}),
                ("ADD_TCP_LISTENER", {"front": tcp_address}),
                ("ACTIVATE_LISTENER", {"front": tcp_address, "proxy": "TCP"}),
                ("ADD_APPLICATION", {"app_id": "echo"}),
                ("ADD_BACKEND", {"app_id": "echo", "backend_id": "e1", "address": echo.address}),
                ("ADD_TCP_FRONT", {"app_id": "echo", "address": tcp_address})):
            answer = sozu.order(kind, data)
            assert answer["status"] == "OK", (kind, answer)
        done = sozu.ctl("certificate", "add", f"--address={address}", f"--certificate={leaf.cert_path}",
                        f"--key={leaf.key_path}")
        assert done.returncode == 0, (done.stdout, done.stderr)
        def served_in_the_jail():  # certificates and backends reached from inside the chroot
            done = curl(port, "jail.test", "/in/jail", ca.path)
            assert done.returncode == 0 and json.loads(done.stdout)["path"] == "/in/jail", done.stderr
            return round_trip(tcp_port, b"from the jail")
        assert on_each_worker(sozu, served_in_the_jail) == [b"from the jail"] * 2
    finally:
        sozu.stop()
        backend.stop()
        echo.stop()
