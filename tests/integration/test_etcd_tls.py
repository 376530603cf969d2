"""The provider and sozuctl reach an etcd that serves TLS and asks for client certificates
([provider.etcd] ca_certificate, certificate and key; docs/etcd.md)."""
from __future__ import annotations

import pytest

from tests.integration.certs import TestCA
from tests.integration.etcd_server import ETCD, EtcdServer, EtcdTLS
from tests.integration.harness import free_port, routed_to, wait_for
from tests.integration.test_etcd_provider import (backend_key, config, everywhere,
                                                  with_provider_tries_logged)


@pytest.fixture
def tls_etcd(tmp_path):
    """A started etcd with TLS and client-certificate authentication; the CA and a client
    certificate it trusts are its .tls.ca, .tls.client_cert and .tls.client_key."""
    if ETCD is None:
        pytest.skip("no etcd binary: `make test` installs Debian's etcd-server")
    ca = TestCA(tmp_path / "pki", "etcd test CA")
    # etcd's JSON gateway is its own client, with its server certificate: both usages.
    server = ca.issue(["localhost"], ips=("127.0.0.1",), usages=("server", "client"))
    client = ca.issue(["sozu-provider"], usages=("client",))
    etcd = EtcdServer(tmp_path, EtcdTLS(ca.path, server.cert_path, server.key_path,
                                        client.cert_path, client.key_path))
    etcd.start()
    yield etcd
    etcd.stop()


def tls_config(tmp_path, port, backends, etcd, client_certificate: bool) -> str:
    lines = f'ca_certificate = "{etcd.tls.ca}"\n'
    if client_certificate:
        lines += f'certificate = "{etcd.tls.client_cert}"\nkey = "{etcd.tls.client_key}"\n'
    return with_provider_tries_logged(config(tmp_path, port, backends, etcd).replace(
        "heartbeat = 1\n", "heartbeat = 1\n" + lines))


def test_the_provider_and_sozuctl_connect_with_a_client_certificate(
        tmp_path, sozu, backend, tls_etcd):
    b1, b2 = backend("b1"), backend("b2")
    port = free_port()
    proxy = sozu(tls_config(tmp_path, port, [b1.port], tls_etcd, client_certificate=True))
    pushed = proxy.ctl("etcd", "push")
    assert pushed.returncode == 0 and "keys put" in pushed.stdout, pushed.stderr
    wait_for(lambda: "keys at revision" in proxy.log(), timeout=20, what="the first sync")
    assert f"etcd at {tls_etcd.endpoint}:" in proxy.log()
    backend_key(tls_etcd, "b2", b2.port)
    wait_for(lambda: everywhere(proxy, {f"127.0.0.1:{b1.port}", f"127.0.0.1:{b2.port}"}),
             what="a change read through a watch over TLS")
    diff = proxy.ctl("etcd", "diff")
    assert "OK: 0 orders between the proxy and etcd" in diff.stdout, diff


def test_without_a_client_certificate_refused_logged_once_and_retried(
        tmp_path, sozu, backend, tls_etcd):
    b1, b2 = backend("b1"), backend("b2")
    port = free_port()
    proxy = sozu(tls_config(tmp_path, port, [b1.port], tls_etcd, client_certificate=False))
    failure = f"etcd at {tls_etcd.endpoint} unreachable ("
    wait_for(lambda: failure in proxy.log(), what="the provider's failure logged")
    line = proxy.log().split(failure, 1)[1].splitlines()[0]
    assert "certificate" in line.lower(), line  # the reason, not only "unreachable"
    pushed = proxy.ctl("etcd", "push")
    assert pushed.returncode == 1 and "certificate" in pushed.stderr.lower(), pushed

    wait_for(lambda: proxy.log().count(f"again: {failure}") >= 2, timeout=20,
             what="two more tries of the provider (logged at debug level)")
    first_tries = [line for line in proxy.log().splitlines() if failure in line and "again: " not in line]
    assert len(first_tries) == 1, first_tries  # once per change of state, the other tries at debug
    assert routed_to(port, "localhost")[1] == "b1"  # the proxy serves from its file meanwhile

    # etcd no longer asks for a client certificate: the provider's next try gets through.
    tls_etcd.stop()
    tls_etcd.tls.client_cert_auth = False
    tls_etcd.start()
    pushed = proxy.ctl("etcd", "push")
    assert pushed.returncode == 0, pushed.stderr
    wait_for(lambda: "keys at revision" in proxy.log(), timeout=20, what="the sync once let in")
    backend_key(tls_etcd, "b2", b2.port)
    wait_for(lambda: everywhere(proxy, {f"127.0.0.1:{b1.port}", f"127.0.0.1:{b2.port}"}),
             what="a change after the provider got in")
    assert "Traceback" not in proxy.log()
