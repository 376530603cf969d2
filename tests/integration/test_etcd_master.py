"""The master runs the etcd provider when the file has [provider.etcd], and starts it again."""
from __future__ import annotations

import os
import re
import signal

from tests.integration.etcd_server import etcd_server  # noqa: F401 (a fixture)
from tests.integration.harness import free_port, routed_to, wait_for
from tests.integration.load import alive
from tests.integration.test_etcd_provider import (PREFIX, backend_key, config, everywhere,
                                                  pushed, refused_in_status)


def provider_pids(proxy) -> list[int]:
    return [int(pid) for pid in re.findall(r"etcd provider started \(pid (\d+)\)", proxy.log())]


def test_the_master_runs_the_provider_and_starts_it_again_when_killed(
        tmp_path, sozu, backend, etcd_server):
    b1, b2, b3 = backend("b1"), backend("b2"), backend("b3")
    port = free_port()
    etcd_server.stop()  # the proxy starts from its file, the provider waits for etcd
    proxy = sozu(config(tmp_path, port, [b1.port], etcd_server))
    wait_for(lambda: "unreachable" in proxy.log(), what="the provider to try etcd")
    assert routed_to(port, "localhost")[1] == "b1"
    etcd_server.start()
    pushed(proxy)
    wait_for(lambda: "keys at revision" in proxy.log(), timeout=20, what="the first sync")
    backend_key(etcd_server, "b2", b2.port)
    wait_for(lambda: everywhere(proxy, {f"127.0.0.1:{b1.port}", f"127.0.0.1:{b2.port}"}),
             what="b2 in every worker")

    (first,) = provider_pids(proxy)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: "etcd provider (pid %d) died: signal SIGKILL" % first in proxy.log(),
             what="the master to see its provider die")
    backend_key(etcd_server, "b3", b3.port)  # while no provider runs, or while one starts
    wait_for(lambda: len(provider_pids(proxy)) == 2, what="a new provider")
    wait_for(lambda: everywhere(proxy, {f"127.0.0.1:{p}" for p in (b1.port, b2.port, b3.port)}),
             what="the change made meanwhile in every worker")
    diff = proxy.ctl("etcd", "diff")
    assert "OK: 0 orders between the proxy and etcd" in diff.stdout, diff
    # The new provider's first sync applied the missed change once, or found it applied.
    sync = proxy.log().rsplit("keys at revision", 1)[1].splitlines()[0]
    assert "1 orders (the difference)" in sync or "already" in sync, sync
    assert "Traceback" not in proxy.log()


def test_the_provider_stops_when_its_master_is_gone(tmp_path, sozu, backend, etcd_server):
    port = free_port()
    proxy = sozu(config(tmp_path, port, [backend("b1").port], etcd_server))
    pushed(proxy)
    wait_for(lambda: "keys at revision" in proxy.log(), timeout=20, what="the first sync")
    (child,) = provider_pids(proxy)
    os.kill(proxy.process.pid, signal.SIGKILL)
    wait_for(lambda: not alive(child), what="the provider to stop without its master")
    assert "the master (pid %d) is gone: stopping" % proxy.process.pid in proxy.log()


def test_the_refused_keys_are_in_the_status_after_an_upgrade(tmp_path, sozu, backend, etcd_server):
    """The new master runs a provider of its own, which reports to it."""
    port = free_port()
    proxy = sozu(config(tmp_path, port, [backend("b1").port], etcd_server))
    pushed(proxy)
    wait_for(lambda: "keys at revision" in proxy.log(), timeout=20, what="the first sync")
    etcd_server.put(f"{PREFIX}applications/broken", "{not json")
    wait_for(lambda: refused_in_status(proxy, 1), what="the refused key in the status")
    upgraded = proxy.ctl("--timeout=40000", "upgrade")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    wait_for(lambda: len(provider_pids(proxy)) == 2, timeout=20, what="the new master's provider")
    new_provider = provider_pids(proxy)[1]
    status = wait_for(lambda: f"etcd provider (pid {new_provider}): 1 keys refused" in (
        text := proxy.ctl("status").stdout) and text, timeout=20,
        what="the new provider's report to the new master")
    assert f"  refused: {PREFIX}applications/broken: the value is not JSON" in status
