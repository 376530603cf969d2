"""Saved state with real processes (docs/architecture.md, "State files"): SAVE_STATE writes Sozu's `JSON\\n\\0`
format atomically, LOAD_STATE applies only the difference, `saved_state` is loaded at start and
`automatic_state_save` rewrites it after every change."""
from __future__ import annotations

import http.client
import json
import os
import threading
import time
from pathlib import Path

import pytest

from sozu.messages import MessageError, Order, dump_orders, load_orders
from sozu.state import ConfigState
from tests.integration.harness import Backend, Sozu, free_port, http_config, wait_for


def ok(answer: dict) -> dict:
    assert answer["status"] == "OK", answer
    return answer


def dump(proxy) -> dict:
    return ok(proxy.command({"id": "dump", "version": 0, "type": "DUMP_STATE"}))["data"]


def save(proxy, path) -> dict:
    return proxy.command({"id": "save", "version": 0, "type": "SAVE_STATE", "data": {"path": str(path)}})


def load(proxy, path) -> dict:
    return proxy.command({"id": "load", "version": 0, "type": "LOAD_STATE", "data": {"path": str(path)}})


def file_state(path) -> dict:
    with open(path, "rb") as file:
        return json.loads(json.dumps(ConfigState.from_orders(load_orders(file.read())).to_json()))


def status(port: int, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def add_site(proxy, app_id: str, backend: Backend) -> None:
    ok(proxy.order("ADD_APPLICATION", {"app_id": app_id}))
    ok(proxy.order("ADD_BACKEND", {"app_id": app_id, "backend_id": "b", "address": f"127.0.0.1:{backend.port}"}))
    ok(proxy.order("ADD_HTTP_FRONT", {"app_id": app_id, "address": proxy.address,
                                      "hostname": f"{app_id}.example"}))


@pytest.fixture(scope="module")
def backend():
    b = Backend("b1")
    yield b
    b.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, backend):
    tmp = tmp_path_factory.mktemp("state")
    port = free_port()
    s = Sozu(tmp, http_config(tmp, port, [backend.port]))
    try:
        s.start()
        s.port, s.address, s.dir = port, f"127.0.0.1:{port}", tmp
        yield s
    finally:
        s.stop()


def test_save_state_writes_sozus_format(proxy, backend, tmp_path):
    add_site(proxy, "saved", backend)
    path = tmp_path / "state.json"
    answer = ok(save(proxy, path))
    data = path.read_bytes()
    messages = data.split(b"\n\0")
    assert data.endswith(b"\n\0") and messages[-1] == b""
    requests = [json.loads(m) for m in messages[:-1]]
    assert answer["message"] == f"saved {len(requests)} orders to {path}"
    assert all(r["type"] == "PROXY" and r["version"] == 0 and set(r["data"]) == {"type", "data"}
               for r in requests)
    assert [r["data"]["type"] for r in requests][:2] == ["ADD_HTTP_LISTENER", "ACTIVATE_LISTENER"]
    assert file_state(path) == dump(proxy)
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary file left behind
    assert os.stat(path).st_mode & 0o777 in (0o600, 0o644)


def test_save_state_is_atomic_for_readers(proxy, backend, tmp_path):
    path = tmp_path / "state.json"
    ok(save(proxy, path))
    seen, broken, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                with open(path, "rb") as file:
                    seen.append(len(load_orders(file.read())))
            except (MessageError, OSError) as error:
                broken.append(repr(error))
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(30):  # the state grows between saves: every file differs
            ok(proxy.order("ADD_APPLICATION", {"app_id": f"atomic-{i}"}))
            ok(save(proxy, path))
    finally:
        stop.set()
        thread.join(5)
    assert broken == []
    assert len(set(seen)) > 1  # the reader did see the file change
    assert file_state(path) == dump(proxy)
    for i in range(30):
        ok(proxy.order("REMOVE_APPLICATION", f"atomic-{i}"))


def test_save_state_error_names_the_path(proxy, tmp_path):
    answer = save(proxy, tmp_path / "missing" / "state.json")
    assert answer["status"] == "ERROR"
    assert answer["message"] == (f"cannot save the state to {tmp_path / 'missing' / 'state.json'}: "
                                 "No such file or directory")


class Load(threading.Thread):
    def __init__(self, port: int, host: str):
        super().__init__(daemon=True)
        self.port, self.host, self.ok, self.failures, self.running = port, host, 0, [], True

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while self.running:
            try:
                conn.request("GET", "/", headers={"Host": self.host})
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    self.ok += 1
                else:
                    self.failures.append(response.status)
            except Exception as error:  # noqa: BLE001 - counted
                self.failures.append(repr(error))
                conn.close()
        conn.close()


def test_load_state_applies_only_the_difference(proxy, backend, tmp_path):
    path = tmp_path / "before.json"
    ok(save(proxy, path))
    before = dump(proxy)
    add_site(proxy, "extra", backend)
    add_site(proxy, "other", backend)
    assert status(proxy.port, "extra.example") == 200
    loads = [Load(proxy.port, "localhost") for _ in range(2)]
    for client in loads:
        client.start()
    try:
        wait_for(lambda: all(c.ok for c in loads), 5, what="the load to run")
        answer = ok(load(proxy, path))
        time.sleep(0.1)
    finally:
        for client in loads:
            client.running = False
            client.join(5)
    # two applications, each with a backend and a front: 6 orders, not the whole state
    assert answer["message"] == f"loaded {path}: 6 orders (the difference) applied by 2 workers"
    assert dump(proxy) == before
    assert [status(proxy.port, "extra.example") for _ in range(4)] == [404] * 4
    assert sum(c.ok for c in loads) > 0 and [f for c in loads for f in c.failures] == []
    hashes = ok(proxy.order("QUERY", {"type": "APPLICATIONS_HASHES"}))["data"]
    assert all(h == hashes["master"] for h in hashes["workers"].values())
    assert ok(load(proxy, path))["message"] == f"the state is already the one in {path}"


def test_a_bad_state_file_changes_nothing(proxy, tmp_path):
    before = dump(proxy)
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"id": "1", "version": 0, "type": "PROXY", "data": {"type": "ADD_APPLICATION",'
                    b' "data": {"app_id": "half"}}}\n\0{"id": "2", "type": "PROXY", "data": {"type": "ADD_BAC')
    answer = load(proxy, bad)
    assert answer["status"] == "ERROR"
    assert answer["message"].startswith(f"{bad}: saved state: message 1: not valid JSON")
    dangling = tmp_path / "dangling.json"
    dangling.write_bytes(b'{"id": "1", "version": 0, "type": "PROXY", "data": {"type": "ADD_BACKEND", '
                         b'"data": {"app_id": "ghost", "backend_id": "b", "address": "127.0.0.1:9"}}}\n\0')
    answer = load(proxy, dangling)
    assert answer["status"] == "ERROR" and answer["message"] == f"{dangling}: no application ghost"
    answer = load(proxy, tmp_path / "absent.json")
    assert answer["status"] == "ERROR"
    assert answer["message"] == f"cannot read the state file {tmp_path / 'absent.json'}: No such file or directory"
    assert dump(proxy) == before


def test_a_load_stopped_by_a_busy_port_says_where_and_keeps_one_state(proxy, tmp_path):
    path = tmp_path / "with-listener.json"
    port = free_port()
    ok(proxy.order("ADD_HTTP_LISTENER", {"front": f"127.0.0.1:{port}"}))
    ok(save(proxy, path))
    ok(proxy.order("REMOVE_LISTENER", {"front": f"127.0.0.1:{port}", "proxy": "HTTP"}))
    ok(proxy.order("ADD_APPLICATION", {"app_id": "not-in-the-file"}))
    squatter = Backend("squatter", port=port)  # the port is taken meanwhile
    try:
        # the difference: REMOVE_APPLICATION (applied), then ADD_HTTP_LISTENER (refused)
        answer = load(proxy, path)
    finally:
        squatter.stop()
    assert answer["status"] == "ERROR"
    assert answer["message"] == (
        f"{path}: order 2 of 2 (ADD_HTTP_LISTENER) was refused: cannot listen on 127.0.0.1:{port}: "
        "Address already in use; the 1 orders before it were applied")
    hashes = ok(proxy.order("QUERY", {"type": "APPLICATIONS_HASHES"}))["data"]
    assert "not-in-the-file" not in hashes["master"]
    assert all(h == hashes["master"] for h in hashes["workers"].values())
    assert f"127.0.0.1:{port}" not in [l["address"] for l in dump(proxy)["listeners"]]


def test_saved_state_is_rewritten_after_every_change_and_loaded_at_start(tmp_path):
    backend = Backend("b1")
    port = free_port()
    saved = tmp_path / "saved.json"
    config = http_config(tmp_path, port, [backend.port],
                         extra=f'saved_state = "{saved}"\nautomatic_state_save = true')
    first = Sozu(tmp_path, config, name="first")
    second = Sozu(tmp_path, config, name="second")
    try:
        first.start()
        first.address = f"127.0.0.1:{port}"
        assert not saved.exists()  # nothing changed yet
        ok(first.order("ADD_APPLICATION", {"app_id": "kept"}))
        assert file_state(saved) == dump(first)
        ok(first.order("ADD_BACKEND", {"app_id": "kept", "backend_id": "b",
                                       "address": f"127.0.0.1:{backend.port}"}))
        assert file_state(saved) == dump(first)
        ok(first.order("ADD_HTTP_FRONT", {"app_id": "kept", "address": first.address,
                                          "hostname": "kept.example"}))
        assert file_state(saved) == dump(first)
        assert status(port, "kept.example") == 200
        ok(first.order("REMOVE_APPLICATION", "app"))  # one the TOML makes
        expected = dump(first)
        assert file_state(saved) == expected
        assert [f for f in os.listdir(tmp_path) if ".tmp." in f] == []
        first.stop()
        second.start()  # the TOML's orders, then the difference to the saved state
        assert dump(second) == expected
        assert status(port, "kept.example") == 200
        assert status(port, "localhost") == 404
    finally:
        first.stop()
        second.stop()
        backend.stop()


def test_load_state_changing_a_listeners_settings_rebinds_it_in_place(proxy, tmp_path):
    """The difference removes the listener and adds it again: the master keeps its socket for the
    new one (the workers still listen on theirs while the order travels), so the port is never
    closed and the load does not fail on "address in use"."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    path = tmp_path / "new-settings.json"
    ok(proxy.order("ADD_HTTP_LISTENER", {"front": address, "front_timeout": 20}))
    ok(proxy.order("ACTIVATE_LISTENER", {"front": address, "proxy": "HTTP"}))
    ok(proxy.order("ADD_HTTP_FRONT", {"app_id": "app", "address": address, "hostname": "moved.example"}))
    ok(save(proxy, path))
    ok(proxy.order("REMOVE_LISTENER", {"front": address, "proxy": "HTTP"}))
    ok(proxy.order("ADD_HTTP_LISTENER", {"front": address, "front_timeout": 10}))
    ok(proxy.order("ACTIVATE_LISTENER", {"front": address, "proxy": "HTTP"}))
    assert status(port, "moved.example") == 404
    answer = ok(load(proxy, path))
    assert answer["message"] == f"loaded {path}: 4 orders (the difference) applied by 2 workers"
    [listener] = [l for l in dump(proxy)["listeners"] if l["address"] == address]
    assert listener["config"]["front_timeout"] == 20 and listener["active"]
    assert [status(port, "moved.example") for _ in range(6)] == [200] * 6
    ok(proxy.order("REMOVE_LISTENER", {"front": address, "proxy": "HTTP"}))


def test_load_state_checks_certificates_as_single_orders_do(proxy, tmp_path):
    """A state file is no back door: a certificate whose key does not match is refused."""
    data = Path(__file__).resolve().parents[1] / "data" / "config"
    port = free_port()
    address = f"127.0.0.1:{port}"
    path = tmp_path / "mismatch.json"
    ok(proxy.order("ADD_HTTPS_LISTENER", {"front": address}))
    ok(save(proxy, path))
    ok(proxy.order("REMOVE_LISTENER", {"front": address, "proxy": "HTTPS"}))
    orders = load_orders(path.read_bytes())
    orders.append(Order.from_json({"type": "ADD_CERTIFICATE", "data": {"front": address, "certificate": {
        "certificate": (data / "cert.pem").read_text(), "key": (data / "other-key.pem").read_text()}}}))
    path.write_bytes(dump_orders(orders))
    before = dump(proxy)
    answer = load(proxy, path)
    assert answer["status"] == "ERROR"
    assert answer["message"].startswith(f"{path}: order 2 of 2 (ADD_CERTIFICATE) was refused: ")
    assert answer["message"].endswith("the 1 orders before it were applied")
    after = dump(proxy)
    assert after["certificates"] == before["certificates"] == []
    ok(proxy.order("REMOVE_LISTENER", {"front": address, "proxy": "HTTPS"}))
