"""sozuctl against a real unix-socket peer that speaks the command protocol from a script.

The peer is a test double of the master's command server only: it records the exact bytes
sozuctl sends and answers scripted JSON, so these tests pin the wire format of every command,
the rendering of answers and the exit statuses. Most run `main(argv)` in-process; a few run
`sozuctl.py` as a real subprocess.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sozu.ctl import render
from sozu.ctl.cli import main

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


# --- the peer --------------------------------------------------------------------------------

def answer(request_id, status="OK", message="", data=None) -> bytes:
    return json.dumps({"id": request_id, "version": 0, "status": status,
                       "message": message, "data": data}).encode() + b"\0"


class Peer:
    """Accepts connections on a unix socket; for each one reads a NUL-terminated request,
    records it, and sends what `reply(request) -> list[bytes]` returns, one chunk per send()
    with a pause in between so that the client sees them in separate recv()s."""

    def __init__(self, path: str):
        self.path = path
        self.raw: list[bytes] = []
        self.reply = lambda req: [answer(req["id"])]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.stopping = False
        self.hang_up = False  # close right after replying instead of waiting for the client
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[dict]:
        return [json.loads(raw[:-1]) for raw in self.raw]

    def _serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                try:
                    self._exchange(conn)
                except OSError:
                    pass

    def _exchange(self, conn):
        data = b""
        while b"\0" not in data:
            chunk = conn.recv(7)  # small reads: the framing must not depend on one recv
            if not chunk:
                return
            data += chunk
        raw = data[:data.index(b"\0") + 1]
        self.raw.append(raw)
        chunks = self.reply(json.loads(raw[:-1]))
        if chunks is None:  # stay silent until the client gives up
            conn.recv(1)
            return
        for i, chunk in enumerate(chunks):
            if i:
                time.sleep(0.01)
            conn.sendall(chunk)
        if not self.hang_up:
            conn.recv(1)  # wait for the client to close

    def close(self):
        self.stopping = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def workdir():
    # Short: a unix socket path must fit in 107 bytes.
    path = tempfile.mkdtemp(prefix="sozuctl-")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def config(workdir):
    path = workdir / "config.toml"
    path.write_text('command_socket = "./sozu.sock"\nworker_count = 1\n')
    return str(path)


@pytest.fixture
def peer(workdir, config):
    p = Peer(str(workdir / "sozu.sock"))
    yield p
    p.close()


def run(config, *args, capsys):
    status = main(["-c", config, *args])
    out, err = capsys.readouterr()
    return status, out, err


def sent(peer) -> dict:
    """The one request sozuctl sent, checked for framing, without its (random) id."""
    assert len(peer.raw) == 1, peer.raw
    raw = peer.raw[0]
    assert raw.endswith(b"\0") and raw.count(b"\0") == 1
    request = json.loads(raw[:-1].decode("utf-8"))
    # Compact UTF-8 JSON: re-encoding compactly (same key order) gives the same bytes.
    assert raw == json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode() + b"\0"
    assert isinstance(request.pop("id"), str)
    return request


def proxy(order_type, data=None, **extra):
    return {"version": 0, "type": "PROXY", "data": {"type": order_type, "data": data}, **extra}


def plain(request_type, data=None, **extra):
    # No "data" key when there is none (sozu.messages.Request.to_json).
    return {"version": 0, "type": request_type, **({} if data is None else {"data": data}),
            **extra}


# --- certificates ----------------------------------------------------------------------------

def _certificate(name: str, key, issuer_name=None, issuer_key=None) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(issuer_name or subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(issuer_key or key, hashes.SHA256()))


def _pem(cert) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A leaf signed by an intermediate signed by a root, and a second leaf."""
    d = tmp_path_factory.mktemp("pki")
    root_key, inter_key, leaf_key, other_key = (ec.generate_private_key(ec.SECP256R1())
                                                for _ in range(4))
    root = _certificate("root", root_key)
    inter = _certificate("intermediate", inter_key, root.subject, root_key)
    leaf = _certificate("example.com", leaf_key, inter.subject, inter_key)
    other = _certificate("other.example.com", other_key)
    key_pem = leaf_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode()
    files = {"cert": _pem(leaf), "key": key_pem, "chain": _pem(inter) + _pem(root),
             "fullchain": _pem(leaf) + _pem(inter), "other": _pem(other),
             "other_key": other_key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()).decode()}
    paths = {}
    for name, text in files.items():
        (d / f"{name}.pem").write_text(text)
        paths[name] = str(d / f"{name}.pem")
    return {"paths": paths, "pem": files,
            "leaf": leaf.fingerprint(hashes.SHA256()).hex(),
            "other": other.fingerprint(hashes.SHA256()).hex(),
            "inter_pem": _pem(inter), "root_pem": _pem(root)}


# --- every command's request -----------------------------------------------------------------

HTTP_LISTENER_DEFAULTS = {"public_address": None, "answer_404": None, "answer_503": None,
                          "expect_proxy": False, "sticky_name": "SOZUBALANCEID",
                          "front_timeout": 60, "back_timeout": 30, "connect_timeout": 3,
                          "request_timeout": 10}

REQUESTS = [
    (["shutdown"], proxy("SOFT_STOP")),
    (["shutdown", "--hard"], proxy("HARD_STOP")),
    (["shutdown", "--worker=1"], proxy("SOFT_STOP", worker_id=1)),
    (["upgrade"], plain("UPGRADE_MASTER")),
    (["upgrade", "--worker", "2"], plain("UPGRADE_WORKER", 2)),
    (["status"], plain("LIST_WORKERS")),
    (["metrics"], proxy("METRICS")),
    (["logging", "--level=info,sozu.http=debug"], proxy("LOGGING", "info,sozu.http=debug")),
    (["state", "dump"], plain("DUMP_STATE")),
    (["application", "add", "--id=MyApp"],
     proxy("ADD_APPLICATION", {"app_id": "MyApp", "sticky_session": False,
                               "https_redirect": False, "proxy_protocol": None, "send_proxy_version": 2,
                               "load_balancing_policy": "RoundRobin", "answer_503": None})),
    (["application", "add", "-i", "MyApp", "--sticky-session", "--https-redirect",
      "--send-proxy", "--load-balancing-policy=leastconnections"],
     proxy("ADD_APPLICATION", {"app_id": "MyApp", "sticky_session": True,
                               "https_redirect": True, "proxy_protocol": "SendHeader", "send_proxy_version": 2,
                               "load_balancing_policy": "LeastConnections",
                               "answer_503": None})),
    (["application", "add", "--id=T", "--send-proxy", "--send-proxy-version=1"],
     proxy("ADD_APPLICATION", {"app_id": "T", "sticky_session": False,
                               "https_redirect": False, "proxy_protocol": "SendHeader", "send_proxy_version": 1,
                               "load_balancing_policy": "RoundRobin", "answer_503": None})),
    (["application", "add", "--id=A", "--expect-proxy", "--load-balancing-policy=PowerOfTwo"],
     proxy("ADD_APPLICATION", {"app_id": "A", "sticky_session": False,
                               "https_redirect": False, "proxy_protocol": "ExpectHeader", "send_proxy_version": 2,
                               "load_balancing_policy": "PowerOfTwo", "answer_503": None})),
    (["application", "remove", "--id=MyApp"], proxy("REMOVE_APPLICATION", "MyApp")),
    (["backend", "add", "--id=MyApp", "--backend-id=b1", "-a", "127.0.0.1:1026"],
     proxy("ADD_BACKEND", {"app_id": "MyApp", "backend_id": "b1", "address": "127.0.0.1:1026",
                           "sticky_id": None, "load_balancing_parameters": None,
                           "backup": False})),
    (["backend", "add", "--id=MyApp", "--backend-id=b2", "--address=[::1]:1027",
      "--weight=10", "--sticky-id=s2", "--backup"],
     proxy("ADD_BACKEND", {"app_id": "MyApp", "backend_id": "b2", "address": "[::1]:1027",
                           "sticky_id": "s2", "load_balancing_parameters": {"weight": 10},
                           "backup": True})),
    (["backend", "remove", "--id=MyApp", "--backend-id=b1", "--address=127.0.0.1:1026"],
     proxy("REMOVE_BACKEND", {"app_id": "MyApp", "backend_id": "b1",
                              "address": "127.0.0.1:1026"})),
    (["frontend", "http", "add", "--id=MyApp", "--address=127.0.0.1:8080",
      "--hostname=example.com"],
     proxy("ADD_HTTP_FRONT", {"app_id": "MyApp", "address": "127.0.0.1:8080",
                              "hostname": "example.com", "path_begin": ""})),
    (["frontend", "https", "remove", "-i", "MyApp", "-a", "127.0.0.1:8443",
      "--hostname=*.example.com", "--path=/api"],
     proxy("REMOVE_HTTPS_FRONT", {"app_id": "MyApp", "address": "127.0.0.1:8443",
                                  "hostname": "*.example.com", "path_begin": "/api"})),
    (["frontend", "https", "add", "--id=MyApp", "--address=127.0.0.1:8443",
      "--hostname=example.com", "--path=/"],
     proxy("ADD_HTTPS_FRONT", {"app_id": "MyApp", "address": "127.0.0.1:8443",
                               "hostname": "example.com", "path_begin": "/"})),
    (["frontend", "http", "add", "--id=A", "--address=127.0.0.1:8080", "--hostname=a.com",
      "--path-regex=^/u/([0-9]+)", "--method=GET", "--method=head", "--rewrite-host=b.internal",
      "--rewrite-path-regex=^/u/([0-9]+)", "--rewrite-path-replacement=/user/\\1",
      "--request-header=set:X-Env:prod", "--response-header=remove:Server"],
     proxy("ADD_HTTP_FRONT", {"app_id": "A", "address": "127.0.0.1:8080", "hostname": "a.com",
                              "path_begin": "", "path": {"kind": "REGEX", "value": "^/u/([0-9]+)"},
                              "methods": ["GET", "HEAD"],
                              "rewrite": {"host": "b.internal", "strip_prefix": None,
                                          "path_regex": "^/u/([0-9]+)", "path_replacement": "/user/\\1"},
                              "request_headers": [{"action": "SET", "name": "X-Env", "value": "prod"}],
                              "response_headers": [{"action": "REMOVE", "name": "Server", "value": ""}]})),
    (["frontend", "http", "add", "--id=A", "--address=127.0.0.1:8080", "--hostname=a.com",
      "--path-equals=/old", "--redirect=308", "--redirect-scheme=https", "--redirect-port=8443",
      "--redirect-path=/new"],
     proxy("ADD_HTTP_FRONT", {"app_id": "A", "address": "127.0.0.1:8080", "hostname": "a.com",
                              "path_begin": "", "path": {"kind": "EQUALS", "value": "/old"},
                              "redirect": {"status": 308, "scheme": "https", "host": None,
                                           "port": 8443, "path": "/new", "query": None}})),
    (["frontend", "list"], proxy("QUERY", {"type": "APPLICATIONS", "data": None})),
    (["frontend", "list", "--id=A"],
     proxy("QUERY", {"type": "APPLICATIONS", "data": {"type": "APP_ID", "data": "A"}})),
    (["frontend", "tcp", "add", "--id=Db", "--address=127.0.0.1:5432"],
     proxy("ADD_TCP_FRONT", {"app_id": "Db", "address": "127.0.0.1:5432"})),
    (["frontend", "tcp", "remove", "--id=Db", "--address=127.0.0.1:5432"],
     proxy("REMOVE_TCP_FRONT", {"app_id": "Db", "address": "127.0.0.1:5432"})),
    (["listener", "http", "add", "--address=127.0.0.1:8080"],
     proxy("ADD_HTTP_LISTENER", {"front": "127.0.0.1:8080", **HTTP_LISTENER_DEFAULTS})),
    (["listener", "http", "add", "--address=127.0.0.1:8080", "--public-address=10.0.0.1:80",
      "--expect-proxy", "--sticky-name=LB", "--front-timeout=5", "--back-timeout=6",
      "--connect-timeout=7", "--request-timeout=8"],
     proxy("ADD_HTTP_LISTENER", {**HTTP_LISTENER_DEFAULTS, "front": "127.0.0.1:8080",
                                 "public_address": "10.0.0.1:80", "expect_proxy": True,
                                 "sticky_name": "LB", "front_timeout": 5, "back_timeout": 6,
                                 "connect_timeout": 7, "request_timeout": 8})),
    (["listener", "http", "add", "--address=127.0.0.1:8080", "--h2c-prior-knowledge",
      "--http2-max-concurrent-streams=8"],
     proxy("ADD_HTTP_LISTENER", {"front": "127.0.0.1:8080", **HTTP_LISTENER_DEFAULTS,
                                 "h2c_prior_knowledge": True, "http2_max_concurrent_streams": 8})),
    (["listener", "https", "add", "--address=127.0.0.1:8443", "--tls-versions=TLSv1.3",
      "--cipher-list=ECDHE-ECDSA-AES256-GCM-SHA384"],
     proxy("ADD_HTTPS_LISTENER", {"front": "127.0.0.1:8443", **HTTP_LISTENER_DEFAULTS,
                                  "versions": ["TLSv1.3"],
                                  "cipher_list": "ECDHE-ECDSA-AES256-GCM-SHA384",
                                  "alpn": ["h2", "http/1.1"], "http2_max_concurrent_streams": 100})),
    (["listener", "https", "add", "--address=127.0.0.1:8443", "--alpn=http/1.1",
      "--http2-max-concurrent-streams=8"],
     proxy("ADD_HTTPS_LISTENER", {"front": "127.0.0.1:8443", **HTTP_LISTENER_DEFAULTS,
                                  "versions": ["TLSv1.2", "TLSv1.3"], "cipher_list": None,
                                  "alpn": ["http/1.1"], "http2_max_concurrent_streams": 8})),
    (["listener", "tcp", "add", "--address=127.0.0.1:5432", "--connect-timeout=1"],
     proxy("ADD_TCP_LISTENER", {"front": "127.0.0.1:5432", "public_address": None,
                                "expect_proxy": False, "front_timeout": 60,
                                "back_timeout": 30, "connect_timeout": 1})),
    (["listener", "http", "remove", "--address=127.0.0.1:8080"],
     proxy("REMOVE_LISTENER", {"front": "127.0.0.1:8080", "proxy": "HTTP"})),
    (["listener", "https", "activate", "-a", "127.0.0.1:8443"],
     proxy("ACTIVATE_LISTENER", {"front": "127.0.0.1:8443", "proxy": "HTTPS",
                                 "from_scm": False})),
    (["listener", "tcp", "deactivate", "--address=127.0.0.1:5432"],
     proxy("DEACTIVATE_LISTENER", {"front": "127.0.0.1:5432", "proxy": "TCP",
                                   "to_scm": False})),
    (["query", "applications"], proxy("QUERY", {"type": "APPLICATIONS", "data": None})),
    (["query", "applications", "--id=MyApp"],
     proxy("QUERY", {"type": "APPLICATIONS", "data": {"type": "APP_ID", "data": "MyApp"}})),
    (["query", "applications", "--domain=example.com"],
     proxy("QUERY", {"type": "APPLICATIONS",
                     "data": {"type": "DOMAIN",
                              "data": {"hostname": "example.com", "path_begin": None}}})),
    (["query", "applications", "--domain=example.com/api"],
     proxy("QUERY", {"type": "APPLICATIONS",
                     "data": {"type": "DOMAIN",
                              "data": {"hostname": "example.com", "path_begin": "/api"}}})),
]


@pytest.mark.parametrize("argv,expected", REQUESTS, ids=[" ".join(a) for a, _ in REQUESTS])
def test_request_sent(peer, config, capsys, argv, expected):
    status, out, err = run(config, *argv, capsys=capsys)
    assert (status, err) == (0, "")
    assert sent(peer) == expected


def test_state_paths_are_absolute(peer, config, capsys, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    assert run(config, "state", "save", "-f", "saved.json", capsys=capsys)[0] == 0
    assert run(config, "state", "load", "--file=sub/../saved.json", capsys=capsys)[0] == 0
    assert [{k: v for k, v in r.items() if k != "id"} for r in peer.requests] == [
        plain("SAVE_STATE", {"path": str(workdir / "saved.json")}),
        plain("LOAD_STATE", {"path": str(workdir / "saved.json")})]


def test_request_ids_are_unique_and_echoed(peer, config, capsys):
    for _ in range(3):
        assert run(config, "status", capsys=capsys)[0] == 0
    ids = [r["id"] for r in peer.requests]
    assert len(set(ids)) == 3


def test_listener_answer_files_are_sent_verbatim(peer, config, capsys, workdir):
    page = "HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope"
    (workdir / "404.http").write_bytes(page.encode())
    (workdir / "503.http").write_bytes(page.replace("404 Not Found", "503 Busy").encode())
    status, _, err = run(config, "listener", "http", "add", "--address=127.0.0.1:8080",
                         f"--answer-404={workdir / '404.http'}",
                         f"--answer-503={workdir / '503.http'}", capsys=capsys)
    assert (status, err) == (0, "")
    data = sent(peer)["data"]["data"]
    assert data["answer_404"] == page
    assert data["answer_503"] == page.replace("404 Not Found", "503 Busy")


def test_application_custom_answer_templates_are_sent_and_checked(peer, config, capsys, workdir):
    page = "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n\r\n<p>%MESSAGE (%REQUEST_ID)</p>"
    (workdir / "502.http").write_text(page)
    status, _, err = run(config, "application", "add", "--id=A", f"--answer-502={workdir / '502.http'}",
                         capsys=capsys)
    assert (status, err) == (0, "")
    assert sent(peer)["data"]["data"]["answer_502"] == page
    (workdir / "bad.http").write_text("HTTP/1.1 504 Late\r\nno colon here\r\n\r\n")
    status, _, err = run(config, "application", "add", "--id=A", f"--answer-504={workdir / 'bad.http'}",
                         capsys=capsys)
    assert status == 1 and "data.answer_504: not a valid HTTP answer: header line without a colon" in err


# --- certificates ----------------------------------------------------------------------------

def test_certificate_add_reads_the_pem_files(peer, config, capsys, pki):
    p = pki["paths"]
    status, _, err = run(config, "certificate", "add", "--address=127.0.0.1:8443",
                         f"--certificate={p['cert']}", f"--key={p['key']}",
                         f"--certificate-chain={p['chain']}", capsys=capsys)
    assert (status, err) == (0, "")
    assert sent(peer) == proxy("ADD_CERTIFICATE", {
        "front": "127.0.0.1:8443",
        "certificate": {"certificate": pki["pem"]["cert"], "key": pki["pem"]["key"],
                        "certificate_chain": [pki["inter_pem"], pki["root_pem"]]},
        "names": []})


def test_certificate_add_splits_a_fullchain_file(peer, config, capsys, pki):
    p = pki["paths"]
    assert run(config, "certificate", "add", "-a", "127.0.0.1:8443",
               f"--certificate={p['fullchain']}", f"--key={p['key']}", capsys=capsys)[0] == 0
    certificate = sent(peer)["data"]["data"]["certificate"]
    assert certificate["certificate"] == pki["pem"]["cert"]
    assert certificate["certificate_chain"] == [pki["inter_pem"]]


def test_certificate_remove_by_file_computes_the_fingerprint(peer, config, capsys, pki):
    assert run(config, "certificate", "remove", "--address=127.0.0.1:8443",
               f"--certificate={pki['paths']['fullchain']}", capsys=capsys)[0] == 0
    assert sent(peer) == proxy("REMOVE_CERTIFICATE", {
        "front": "127.0.0.1:8443", "fingerprint": pki["leaf"], "names": []})


def test_certificate_remove_by_fingerprint(peer, config, capsys, pki):
    assert run(config, "certificate", "remove", "--address=127.0.0.1:8443",
               f"--fingerprint={pki['leaf'].upper()}", capsys=capsys)[0] == 0
    assert sent(peer)["data"]["data"]["fingerprint"] == pki["leaf"]


def test_certificate_replace(peer, config, capsys, pki):
    p = pki["paths"]
    assert run(config, "certificate", "replace", "--address=127.0.0.1:8443",
               f"--new-certificate={p['other']}", f"--new-key={p['other_key']}",
               f"--old-certificate={p['cert']}", capsys=capsys)[0] == 0
    assert sent(peer) == proxy("REPLACE_CERTIFICATE", {
        "front": "127.0.0.1:8443",
        "new_certificate": {"certificate": pki["pem"]["other"],
                            "key": pki["pem"]["other_key"], "certificate_chain": []},
        "old_fingerprint": pki["leaf"], "new_names": []})


@pytest.mark.parametrize("args,message", [
    (["--certificate=/nonexistent.pem", "--key=/nonexistent.key"],
     "cannot read the certificate file /nonexistent.pem"),
    (["--certificate={key}", "--key={key}"], "no PEM certificate in"),
    (["--certificate={cert}", "--key={cert}"], "no PEM private key in"),
])
def test_certificate_file_errors_exit_1_without_contacting_the_proxy(
        peer, config, capsys, pki, args, message):
    args = [a.format(cert=pki["paths"]["cert"], key=pki["paths"]["key"]) for a in args]
    status, out, err = run(config, "certificate", "add", "--address=127.0.0.1:8443", *args,
                           capsys=capsys)
    assert status == 1 and message in err and err.startswith("sozuctl: ")
    assert peer.raw == []


# --- client-side validation ------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["application", "add", "--id=A", "--load-balancing-policy=fastest"],
     "--load-balancing-policy must be one of"),
    (["backend", "add", "--id=A", "--backend-id=b", "--address=127.0.0.1:1", "--weight=x"],
     "--weight expects a whole number"),
    (["shutdown", "--worker=-1"], "--worker must be at least 0"),
    (["certificate", "remove", "--address=127.0.0.1:8443", "--fingerprint=abc"],
     "--fingerprint expects 64 hexadecimal digits"),
    (["backend", "add", "--id=A", "--backend-id=b", "--address=localhost:80"], "address"),
    (["frontend", "http", "add", "--id=A", "--address=127.0.0.1:99999", "--hostname=a.b"],
     "address"),
    (["listener", "https", "add", "--address=127.0.0.1:8443", "--tls-versions=SSLv3"],
     "SSLv3"),
    (["frontend", "http", "add", "--id=A", "--address=127.0.0.1:8080", "--hostname=a.b",
      "--path-regex=(("], "data.path.value: bad regular expression"),
    (["frontend", "http", "add", "--id=A", "--address=127.0.0.1:8080", "--hostname=a.b",
      "--request-header=set:Transfer-Encoding:chunked"], "data.request_headers[0].name"),
    (["frontend", "http", "add", "--id=A", "--address=127.0.0.1:8080", "--hostname=a.b",
      "--request-header=set:X-A"], "--request-header: expected"),
    (["frontend", "http", "add", "--id=A", "--address=127.0.0.1:8080", "--hostname=a.b",
      "--redirect=303", "--redirect-host=b.c"], "data.redirect.status"),
])
def test_invalid_orders_never_reach_the_proxy(peer, config, capsys, argv, message):
    status, out, err = run(config, *argv, capsys=capsys)
    assert status == 1, (out, err)
    assert message in err and err.startswith("sozuctl: ") and err.count("\n") == 1
    assert peer.raw == []


@pytest.mark.parametrize("argv", [
    [], ["bogus"], ["backend", "add", "--id=A"], ["status", "--nope"],
    ["application", "add", "--id=A", "--send-proxy", "--expect-proxy"],
    ["query", "applications", "--id=A", "--domain=x"],
    ["certificate", "remove", "--address=127.0.0.1:1"],
    ["listener", "tcp", "add", "--address=127.0.0.1:1", "--sticky-name=x"],
])
def test_bad_usage_exits_1(peer, config, capsys, argv):
    status, out, err = run(config, *argv, capsys=capsys)
    assert status == 1 and out == ""
    assert err.startswith("sozuctl: invalid command line")
    assert peer.raw == []


def test_usage_error_shows_the_usage_of_that_command(config, capsys):
    _, _, err = run(config, "backend", "add", "--id=A", capsys=capsys)
    lines = err.splitlines()[1:]
    assert len(lines) == 3 and all("sozuctl [options] backend" in line for line in lines)


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage:" in out and "certificate replace" in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("sozuctl ")


def test_no_config_exits_1(capsys, monkeypatch):
    monkeypatch.delenv("SOZU_CONFIG", raising=False)
    assert main(["status"]) == 1
    assert "SOZU_CONFIG" in capsys.readouterr().err


def test_sozu_config_environment_variable(peer, config, capsys, monkeypatch):
    monkeypatch.setenv("SOZU_CONFIG", config)
    assert main(["status"]) == 0
    assert sent(peer) == plain("LIST_WORKERS")


def test_bad_config_exits_1_with_its_message(workdir, capsys):
    path = workdir / "bad.toml"
    path.write_text('command_sockett = "x.sock"\n')
    assert main(["-c", str(path), "status"]) == 1
    err = capsys.readouterr().err
    assert "command_sockett" in err and err.count("\n") == 1


# --- answers and exit statuses ---------------------------------------------------------------

def test_ok_answer(peer, config, capsys):
    assert run(config, "application", "remove", "--id=A", capsys=capsys) == (0, "OK\n", "")
    peer.reply = lambda req: [answer(req["id"], message="application A removed")]
    assert run(config, "application", "remove", "--id=A", capsys=capsys) == \
        (0, "OK: application A removed\n", "")


def test_error_answer_exits_1(peer, config, capsys):
    peer.reply = lambda req: [answer(req["id"], "ERROR", "no application A")]
    assert run(config, "application", "remove", "--id=A", capsys=capsys) == \
        (1, "", "ERROR: no application A\n")


def test_error_answer_with_data_shows_the_data(peer, config, capsys):
    peer.reply = lambda req: [answer(req["id"], "ERROR", "worker 1: no answer", data={
        "workers": {"0": {"requests": 3}}, "total": {"requests": 3}})]
    assert run(config, "metrics", capsys=capsys) == (
        1, "METRIC    WORKER 0  TOTAL\nrequests         3      3\n",
        "ERROR: worker 1: no answer\n")


def test_processing_answers_are_skipped(peer, config, capsys):
    peer.reply = lambda req: [answer(req["id"], "PROCESSING", "worker 0 done"),
                              answer(req["id"], "PROCESSING", "worker 1 done"),
                              answer(req["id"], "OK", "upgraded")]
    assert run(config, "upgrade", capsys=capsys) == \
        (0, "OK: upgraded\n", "PROCESSING: worker 0 done\nPROCESSING: worker 1 done\n")


def test_answers_for_other_ids_are_ignored(peer, config, capsys):
    peer.reply = lambda req: [answer("someone-else", "ERROR", "not yours"),
                              answer(req["id"], "OK")]
    assert run(config, "status", "--json", capsys=capsys)[0] == 0


def test_answer_split_across_many_recvs(peer, config, capsys):
    def reply(req):
        data = answer(req["id"], "PROCESSING", "wait") + answer(
            req["id"], data={"workers": [{"id": "master", "pid": 1, "state": "RUNNING",
                                          "restarts": 0}]})
        return [data[i:i + 5] for i in range(0, len(data), 5)]
    peer.reply = reply
    status, out, _ = run(config, "--timeout=10000", "status", capsys=capsys)
    assert status == 0 and "RUNNING" in out


def test_two_answers_in_one_recv(peer, config, capsys):
    peer.reply = lambda req: [answer(req["id"], "PROCESSING", "a") + answer(req["id"], "OK")]
    assert run(config, "shutdown", capsys=capsys) == (0, "OK\n", "PROCESSING: a\n")


def test_json_output_is_the_answer(peer, config, capsys):
    data = {"workers": [{"id": 0, "pid": 42, "state": "RUNNING", "restarts": 1}]}
    peer.reply = lambda req: [answer(req["id"], "PROCESSING", "wait"),
                              answer(req["id"], data=data)]
    status, out, err = run(config, "--json", "status", capsys=capsys)
    assert (status, err) == (0, "")
    document = json.loads(out)
    assert document == {"id": peer.requests[0]["id"], "version": 0, "status": "OK",
                        "message": "", "data": data}


def test_json_output_of_an_error(peer, config, capsys):
    peer.reply = lambda req: [answer(req["id"], "ERROR", "nope")]
    status, out, err = run(config, "metrics", "--json", capsys=capsys)
    assert (status, err) == (1, "")
    assert json.loads(out)["message"] == "nope"


def test_missing_socket_exits_2_naming_it(config, workdir, capsys):
    status, out, err = run(config, "status", capsys=capsys)
    assert (status, out) == (2, "")
    assert err == f"sozuctl: cannot reach the proxy at {workdir / 'sozu.sock'}: " \
                  f"No such file or directory\n"


def test_refused_connection_exits_2(config, workdir, capsys):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(workdir / "sozu.sock"))  # bound, never listening: a dead proxy's socket
    try:
        status, _, err = run(config, "status", capsys=capsys)
    finally:
        stale.close()
    assert status == 2 and "Connection refused" in err and str(workdir / "sozu.sock") in err


def test_timeout_exits_2(peer, config, workdir, capsys):
    peer.reply = lambda req: None
    started = time.monotonic()
    status, out, err = run(config, "--timeout=200", "status", capsys=capsys)
    assert time.monotonic() - started < 2
    assert (status, out) == (2, "")
    assert err == f"sozuctl: no answer from the proxy at {workdir / 'sozu.sock'} " \
                  f"within 200 ms\n"


def test_timeout_counts_processing_answers(peer, config, capsys):
    peer.reply = lambda req: [answer(req["id"], "PROCESSING", "slow")]
    status, _, err = run(config, "--timeout=300", "upgrade", capsys=capsys)
    assert status == 2
    assert err.splitlines()[-1].endswith("within 300 ms")


def test_connection_closed_before_the_answer_exits_2(peer, config, capsys):
    peer.hang_up = True
    peer.reply = lambda req: [answer(req["id"], "PROCESSING", "a") + b'{"id": "trunc']
    status, _, err = run(config, "status", capsys=capsys)
    assert status == 2
    assert err.splitlines()[-1].endswith("the connection was closed before the answer")


def test_garbage_answer_exits_2(peer, config, capsys):
    peer.reply = lambda req: [b"this is not json\0"]
    status, _, err = run(config, "status", capsys=capsys)
    assert status == 2 and err.startswith("sozuctl: cannot reach the proxy at")
    assert "malformed answer" in err


# --- rendering -------------------------------------------------------------------------------

def test_status_table(peer, config, capsys):
    peer.reply = lambda req: [answer(req["id"], data={"workers": [
        {"id": 1, "pid": 1235, "state": "RUNNING", "restarts": 2, "generation": 0},
        {"id": "master", "pid": 1233, "state": "RUNNING", "restarts": 0, "generation": 0},
        {"id": 0, "pid": 1234, "state": "STOPPING", "restarts": 0, "generation": 0}]})]
    status, out, _ = run(config, "status", capsys=capsys)
    assert status == 0
    assert out == (
        "ID       PID  STATE     RESTARTS  GENERATION\n"
        "master  1233  RUNNING          0           0\n"
        "0       1234  STOPPING         0           0\n"
        "1       1235  RUNNING          2           0\n")


def test_status_names_the_keys_a_provider_refused(peer, config, capsys):
    peer.reply = lambda req: [answer(req["id"], data={
        "workers": [{"id": "master", "pid": 1233, "state": "RUNNING", "restarts": 0}],
        "providers": [{"provider": "etcd", "pid": 1240, "refused": [
            {"key": "/sozu/applications/broken", "reason": "the value is not JSON: ..."}]}]})]
    status, out, _ = run(config, "status", capsys=capsys)
    assert status == 0
    assert out.endswith(
        "\n\netcd provider (pid 1240): 1 keys refused\n"
        "  refused: /sozu/applications/broken: the value is not JSON: ...\n")


def test_metrics_table(peer, config, capsys):
    peer.reply = lambda req: [answer(req["id"], data={
        "workers": {"1": {"requests": 5, "connections": 1},
                    "0": {"requests": 10, "connections": 2, "errors": 1}},
        "total": {"requests": 15, "connections": 3, "errors": 1}})]
    status, out, _ = run(config, "metrics", capsys=capsys)
    assert status == 0
    assert out == (
        "METRIC       WORKER 0  WORKER 1  TOTAL\n"
        "connections         2         1      3\n"
        "errors              1         -      1\n"
        "requests           10         5     15\n")


def test_metrics_histograms_are_shown_as_percentiles(peer, config, capsys):
    buckets = [0] * 16
    buckets[3] = 10  # ten requests of 5..10 ms
    peer.reply = lambda req: [answer(req["id"], data={
        "workers": {"0": {"requests": 10, "request_time_buckets": buckets}},
        "total": {"requests": 10, "p50_ms": 10.0, "p90_ms": 10.0, "p99_ms": 10.0,
                  "p99.9_ms": 10.0}})]
    status, out, _ = run(config, "metrics", capsys=capsys)
    assert status == 0
    assert out == (
        "METRIC    WORKER 0  TOTAL\n"
        "p50_ms          10     10\n"
        "p90_ms          10     10\n"
        "p99.9_ms        10     10\n"
        "p99_ms          10     10\n"
        "requests        10     10\n")


APP = {"app_id": "MyApp", "configuration": {"app_id": "MyApp", "sticky_session": True, "https_redirect": False,
                         "proxy_protocol": None, "load_balancing_policy": "RoundRobin"},
       "http_frontends": [{"app_id": "MyApp", "address": "127.0.0.1:8080",
                           "hostname": "example.com", "path_begin": "/api"}],
       "https_frontends": [], "tcp_frontends": [],
       "backends": [{"app_id": "MyApp", "backend_id": "b1", "address": "127.0.0.1:1026",
                     "sticky_id": None, "load_balancing_parameters": {"weight": 100},
                     "backup": False}]}


def test_query_applications_when_all_agree(peer, config, capsys):
    peer.reply = lambda req: [answer(req["id"], data={
        "master": [APP], "workers": {"0": [APP], "1": [APP]}})]
    status, out, _ = run(config, "query", "applications", capsys=capsys)
    assert status == 0
    assert out == (
        "APPLICATION  KIND           ADDRESS         ROUTE / BACKEND  SETTINGS\n"
        "MyApp        application                                     RoundRobin sticky\n"
        "MyApp        http frontend  127.0.0.1:8080  example.com/api\n"
        "MyApp        backend        127.0.0.1:1026  b1               weight=100\n"
        "(master, worker 0, worker 1 agree)\n")


def test_query_applications_when_workers_disagree(peer, config, capsys):
    peer.reply = lambda req: [answer(req["id"], data={
        "master": [APP], "workers": {"0": [APP], "1": []}})]
    status, out, _ = run(config, "query", "applications", "--id=MyApp", capsys=capsys)
    assert status == 0
    sections = out.split("\n\n")
    assert [s.splitlines()[0] for s in sections] == ["master:", "worker 0:", "worker 1:"]
    assert "example.com/api" in sections[1] and sections[2] == "worker 1:\nno application\n"


def test_query_applications_with_master_hashes(peer, config, capsys):
    peer.reply = lambda req: [answer(req["id"], data={
        "master": {"MyApp": "0f" * 32}, "workers": {"0": [APP], "1": [APP]}})]
    status, out, _ = run(config, "query", "applications", capsys=capsys)
    assert status == 0
    tables = out.split("\n\n")
    assert tables[0].endswith("(worker 0, worker 1 agree)")
    assert tables[1] == f"master (application hashes):\nAPPLICATION  HASH\nMyApp        {'0f' * 32}\n"


def test_state_dump(peer, config, capsys):
    listener = {"front": "127.0.0.1:8080", "public_address": None, "answer_404": "HTTP/1.1…",
                "expect_proxy": False, "front_timeout": 60, "back_timeout": 30,
                "connect_timeout": 3, "request_timeout": 10}
    dump = {
        "listeners": [
            {"address": "127.0.0.1:8080", "protocol": "http", "active": True,
             "config": listener},
            {"address": "127.0.0.1:8443", "protocol": "https", "active": False,
             "config": {"front": "127.0.0.1:8443", "expect_proxy": True,
                        "versions": ["TLSv1.2", "TLSv1.3"]}}],
        "applications": [APP],
        "certificates": [{"address": "127.0.0.1:8443", "fingerprint": "ab" * 32,
                          "names": ["example.com"]}],
    }
    peer.reply = lambda req: [answer(req["id"], data=dump)]
    status, out, _ = run(config, "state", "dump", capsys=capsys)
    assert status == 0
    assert out == (
        "Listeners:\n"
        "PROTOCOL  ADDRESS         ACTIVE  PUBLIC ADDRESS  SETTINGS\n"
        "http      127.0.0.1:8080  yes     -               "
        "front=60s back=30s connect=3s request=10s\n"
        "https     127.0.0.1:8443  no      -               expect-proxy TLSv1.2+TLSv1.3\n\n"
        "Applications:\n"
        "APPLICATION  KIND           ADDRESS         ROUTE / BACKEND  SETTINGS\n"
        "MyApp        application                                     RoundRobin sticky\n"
        "MyApp        http frontend  127.0.0.1:8080  example.com/api\n"
        "MyApp        backend        127.0.0.1:1026  b1               weight=100\n\n"
        "Certificates:\n"
        "ADDRESS         FINGERPRINT                                                       NAMES\n"
        f"127.0.0.1:8443  {'ab' * 32}  example.com\n")


def test_state_dump_of_an_empty_state_and_unknown_sections():
    assert render.state({"listeners": [], "applications": [], "certificates": []}) == (
        "Listeners:\n(none)\n\nApplications:\nno application\n\nCertificates:\n(none)")
    text = render.state({"extra": {"MyApp": {"sticky_session": False}},
                         "more": [{"address": "127.0.0.1:8080", "protocol": "http"}]})
    assert text == ("Extra:\nKEY    STICKY_SESSION\nMyApp  no\n\n"
                    "More:\nADDRESS         PROTOCOL\n127.0.0.1:8080  http")


def test_renderers_survive_unexpected_data():
    for renderer in (render.status, render.metrics, render.applications, render.state):
        for data in (None, [], {}, "x", {"workers": "x", "total": 3, "master": 7}):
            assert isinstance(renderer(data), str)


def test_json_state_dump_prints_the_data(peer, config, capsys):
    dump = {"listeners": [], "applications": [APP], "certificates": []}
    peer.reply = lambda req: [answer(req["id"], data=dump)]
    status, out, _ = run(config, "--json", "state", "dump", capsys=capsys)
    assert status == 0 and json.loads(out)["data"] == dump


# --- config check ----------------------------------------------------------------------------

def test_config_check_ok(config, capsys):
    status, out, err = run(config, "config", "check", capsys=capsys)
    assert (status, err) == (0, "")
    assert out.startswith("OK: ") and config in out


def test_config_check_json(config, capsys):
    status, out, _ = run(config, "--json", "config", "check", capsys=capsys)
    document = json.loads(out)
    assert status == 0 and document["status"] == "OK"
    assert document["data"]["command_socket"] == str(Path(config).parent / "sozu.sock")


def test_config_check_error(workdir, capsys):
    path = workdir / "bad.toml"
    path.write_text('command_socket = "s.sock"\nworker_count = -3\n')
    status, out, err = run(str(path), "config", "check", capsys=capsys)
    assert (status, out) == (1, "")
    assert err.startswith("ERROR: ") and "worker_count" in err and err.count("\n") == 1


# --- the real command ------------------------------------------------------------------------

def sozuctl(*args, cwd=None, env=None):
    return subprocess.run([PYTHON, str(ROOT / "sozuctl.py"), *args], capture_output=True,
                          text=True, timeout=15, cwd=cwd, env=env)


def test_subprocess_status_with_a_relative_socket_path(peer, config, workdir):
    peer.reply = lambda req: [answer(req["id"], data={"workers": [
        {"id": "master", "pid": 7, "state": "RUNNING", "restarts": 0}]})]
    result = sozuctl("-c", "config.toml", "status", cwd=str(workdir))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == ["ID      PID  STATE    RESTARTS",
                                          "master    7  RUNNING         0"]


def test_subprocess_json(peer, config):
    result = sozuctl("-c", config, "--json", "application", "add", "--id=A")
    assert result.returncode == 0
    assert json.loads(result.stdout)["status"] == "OK"
    assert sent(peer)["data"]["type"] == "ADD_APPLICATION"


def test_subprocess_failures_have_no_traceback(config, workdir):
    unreachable = sozuctl("-c", config, "status")
    usage = sozuctl("-c", config, "frontend", "http", "add")
    no_config = sozuctl("status", env={k: v for k, v in os.environ.items()
                                       if k != "SOZU_CONFIG"})
    assert [unreachable.returncode, usage.returncode, no_config.returncode] == [2, 1, 1]
    assert str(workdir / "sozu.sock") in unreachable.stderr
    for result in (unreachable, usage, no_config):
        assert "Traceback" not in result.stderr and result.stdout == ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_against_the_real_master(workdir):
    """The same commands against `sozu.py start`: the answer shapes the renderers expect."""
    port = _free_port()
    path = workdir / "master.toml"
    path.write_text(f'command_socket = "./master.sock"\nworker_count = 1\nmax_connections = 50\n'
                    f'[[listeners]]\nprotocol = "http"\naddress = "127.0.0.1:{port}"\n')
    master = subprocess.Popen([PYTHON, str(ROOT / "sozu.py"), "start", "-c", str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while (status := sozuctl("-c", str(path), "--timeout=500", "status")).returncode:
            assert master.poll() is None, master.stderr.read()
            assert time.monotonic() < deadline, status.stderr
            time.sleep(0.1)
        assert [line.split()[0] for line in status.stdout.splitlines()] == ["ID", "master", "0"]

        def ok(*args):
            result = sozuctl("-c", str(path), *args)
            assert (result.returncode, result.stderr) == (0, ""), result
            return result.stdout

        ok("application", "add", "--id=MyApp", "--sticky-session")
        ok("backend", "add", "-i", "MyApp", "--backend-id=b1", "-a", "127.0.0.1:1026")
        ok("frontend", "http", "add", "-i", "MyApp", "-a", f"127.0.0.1:{port}",
           "--hostname=Example.COM", "--path=/api")
        query = ok("query", "applications", "--id=MyApp")
        assert "example.com/api" in query and "b1" in query and "worker 0" in query
        dump = json.loads(ok("--json", "state", "dump"))["data"]
        assert [app["app_id"] for app in dump["applications"]] == ["MyApp"]
        assert "METRIC" in ok("metrics")
        refused = sozuctl("-c", str(path), "application", "remove", "--id=Nope")
        assert refused.returncode == 1 and refused.stderr.startswith("ERROR: ")
        assert ok("shutdown").startswith("OK")
        assert master.wait(10) == 0
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()


def test_upgrade_waits_longer_than_other_commands_by_default():
    from sozu.ctl import cli
    assert cli.UPGRADE_TIMEOUT_MS >= 2 * 30_000 > cli.DEFAULT_TIMEOUT_MS


def test_frontend_list_shows_rules_and_actions():
    front = {"app_id": "A", "address": "127.0.0.1:8080", "hostname": "a.com", "path_begin": "",
             "path": {"kind": "REGEX", "value": "^/u/"}, "methods": ["GET", "HEAD"],
             "redirect": {"status": 301, "scheme": "https", "host": "b.com", "port": None,
                          "path": None, "query": None},
             "response_headers": [{"action": "SET", "name": "X-Frame-Options", "value": "DENY"}]}
    plain = {"app_id": "A", "address": "127.0.0.1:8080", "hostname": "a.com", "path_begin": "/api"}
    view = {"configuration": {"app_id": "A"}, "http_frontends": [front, plain], "https_frontends": [],
            "tcp_frontends": [], "backends": []}
    out = render.frontends({"master": [view], "workers": {"0": [view]}})
    lines = out.splitlines()
    assert lines[0].split() == ["APPLICATION", "PROTOCOL", "ADDRESS", "ROUTE", "METHODS", "ACTIONS"]
    assert lines[1].split() == ["A", "http", "127.0.0.1:8080", "a.com", "~^/u/", "GET,HEAD",
                                "redirect=301", "https://b.com", "response:set", "X-Frame-Options=DENY"]
    assert lines[2].split() == ["A", "http", "127.0.0.1:8080", "a.com/api", "*"]
    assert "(master, worker 0 agree)" in out
