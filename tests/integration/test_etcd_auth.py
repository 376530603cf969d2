"""The provider authenticates to etcd with [provider.etcd] user and password."""
from __future__ import annotations

import subprocess

from tests.integration.etcd_server import etcd_server  # noqa: F401 (a fixture)
from tests.integration.harness import free_port, wait_for
from tests.integration.test_etcd_provider import PREFIX, backend_key, config, everywhere


def etcdctl(server, *args: str) -> str:
    result = subprocess.run(["etcdctl", "--endpoints", server.endpoint, *args],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    return result.stdout


def with_user(text: str, password: str) -> str:
    return text.replace("heartbeat = 1\n", f'heartbeat = 1\nuser = "root"\npassword = "{password}"\n')


def test_the_provider_and_sozuctl_authenticate(tmp_path, sozu, backend, etcd_server):
    etcdctl(etcd_server, "user", "add", "root:s3cret")
    etcdctl(etcd_server, "auth", "enable")
    b1, b2 = backend("b1"), backend("b2")
    port = free_port()
    proxy = sozu(with_user(config(tmp_path, port, [b1.port], etcd_server), "s3cret"))
    pushed = proxy.ctl("etcd", "push")
    assert pushed.returncode == 0, pushed.stderr
    wait_for(lambda: "keys at revision" in proxy.log(), timeout=20, what="the first sync")
    etcdctl(etcd_server, "--user", "root:s3cret", "put", f"{PREFIX}backends/app/b2",
            '{"type": "ADD_BACKEND", "data": {"app_id": "app", "backend_id": "b2", '
            f'"address": "127.0.0.1:{b2.port}"}}}}')
    wait_for(lambda: everywhere(proxy, {f"127.0.0.1:{b1.port}", f"127.0.0.1:{b2.port}"}),
             what="a change read through an authenticated watch")

    proxy.config_path.write_text(with_user(config(tmp_path, port, [b1.port], etcd_server), "wrong"))
    refused = proxy.ctl("etcd", "diff")
    assert refused.returncode == 1 and "authentication failed" in refused.stderr, refused
