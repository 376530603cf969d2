"""A real etcd server for the provider tests: loopback ports the kernel picked, a data dir in
the test's temporary folder, stopped by the test (etcd from Debian's etcd-server package)."""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import etcd3gw
import pytest
import requests

from tests.integration.harness import free_port, wait_for

ETCD = shutil.which("etcd")


@dataclass
class EtcdTLS:
    """etcd serving its clients over TLS: its certificate and key, the CA it trusts for client
    certificates (asked for when `client_cert_auth`), and the client certificate the test's own
    requests use."""
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    client_cert_auth: bool = True


class EtcdServer:
    def __init__(self, tmp: Path, tls: EtcdTLS | None = None):
        self.data_dir = tmp / "etcd-data"
        self.log_path = tmp / "etcd.log"
        self.client_port, self.peer_port = free_port(), free_port()
        self.tls = tls
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    def _tls_options(self) -> list[str]:
        tls = self.tls
        if tls is None:
            return []
        options = ["--cert-file", str(tls.cert), "--key-file", str(tls.key)]
        if tls.client_cert_auth:
            options += ["--client-cert-auth", "--trusted-ca-file", str(tls.ca)]
        return options

    def start(self) -> "EtcdServer":
        peer = f"http://127.0.0.1:{self.peer_port}"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [ETCD, "--name", "test", "--data-dir", str(self.data_dir),
                 "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"test={peer}", *self._tls_options()],
                stdout=log, stderr=log)
        wait_for(self.healthy, timeout=20, what="etcd to serve")
        return self

    def healthy(self) -> bool:
        assert self.process.poll() is None, self.log_path.read_text()[-2000:]
        self.client().status()
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def client(self) -> etcd3gw.Etcd3Client:
        if self.tls is None:
            return etcd3gw.Etcd3Client("127.0.0.1", self.client_port, timeout=5)
        session = requests.Session()
        session.trust_env = False  # else REQUESTS_CA_BUNDLE would replace the test's CA
        session.verify = str(self.tls.ca)
        session.cert = (str(self.tls.client_cert), str(self.tls.client_key))
        return etcd3gw.Etcd3Client("127.0.0.1", self.client_port, protocol="https", timeout=5,
                                   session=session)

    def put(self, key: str, value) -> int:
        raw = value if isinstance(value, (bytes, str)) else json.dumps(value)
        client = self.client()
        client.put(key, raw)
        return int(client.status()["header"]["revision"])

    def delete(self, key: str) -> None:
        self.client().delete(key)

    def compact(self) -> None:
        client = self.client()
        revision = int(client.status()["header"]["revision"])
        client.post(client.get_url("/kv/compaction"), json={"revision": revision, "physical": True})


@pytest.fixture
def etcd_server(tmp_path):
    if ETCD is None:
        pytest.skip("no etcd binary: `make test` installs Debian's etcd-server")
    server = EtcdServer(tmp_path).start()
    yield server
    server.stop()
