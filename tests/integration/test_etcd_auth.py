"""The provider authenticates to etcd with [provider.etcd] user and password."""
from __future__ import annotations

import subprocess

from tests.integration.etcd_server import etcd_server  # noqa: F401 (a fixture)
from tests.integration.harness import free_port, routed_to, wait_for
from tests.integration.test_etcd_provider import (PREFIX, config, everywhere,
                                                  with_provider_tries_logged)


def etcdctl(server, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["etcdctl", "--endpoints", server.endpoint, *args], input=stdin,
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


def test_a_wrong_password_is_refused_logged_once_and_retried(tmp_path, sozu, backend, etcd_server):
    etcdctl(etcd_server, "user", "add", "root:s3cret")
    etcdctl(etcd_server, "auth", "enable")
    b1 = backend("b1")
    port = free_port()
    text = config(tmp_path, port, [b1.port], etcd_server)
    proxy = sozu(with_provider_tries_logged(with_user(text, "other")))
    failure = f"etcd at {etcd_server.endpoint} refused the provider ("
    wait_for(lambda: failure in proxy.log(), what="the provider's failure logged")
    line = proxy.log().split(failure, 1)[1].splitlines()[0]
    assert "authentication failed" in line, line
    wait_for(lambda: proxy.log().count(f"again: {failure}") >= 2, timeout=20,
             what="two more tries of the provider (logged at debug level)")
    first_tries = [line for line in proxy.log().splitlines() if failure in line and "again: " not in line]
    assert len(first_tries) == 1, first_tries  # once per change of state, the other tries at debug
    assert routed_to(port, "localhost")[1] == "b1"  # the proxy serves from its file meanwhile

    # Without any user, sozuctl is refused as clearly.
    proxy.config_path.write_text(text)
    anonymous = proxy.ctl("etcd", "diff")
    assert anonymous.returncode == 1 and "etcd: " in anonymous.stderr, anonymous
    assert "Traceback" not in anonymous.stderr

    # root's password becomes the one the provider has: its next try gets in, no restart.
    etcdctl(etcd_server, "--user", "root:s3cret", "user", "passwd", "root", "--interactive=false",
            stdin="other\n")
    proxy.config_path.write_text(with_user(text, "other"))
    pushed = proxy.ctl("etcd", "push")
    assert pushed.returncode == 0, pushed.stderr
    wait_for(lambda: "keys at revision" in proxy.log(), timeout=20, what="the sync once let in")
    assert everywhere(proxy, {f"127.0.0.1:{b1.port}"})
