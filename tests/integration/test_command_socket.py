"""The command socket against a real master: the file, the framing, many clients, bad input.

Issue #3, points 1 and 6: every bad message gets an ERROR answer or a closed connection, the
state is unchanged, and the master keeps serving everybody else at once.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import threading
import time

import pytest

from tests.integration.harness import PYTHON, ROOT, Backend, Sozu, free_port, http_config

MAX_SIZE = 65536


class Conn:
    """A raw command-socket connection: bytes out, NUL-framed JSON answers in."""

    def __init__(self, path: str, timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def send(self, message) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\0"
        self.sock.sendall(data)

    def answer(self) -> dict:
        while b"\0" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the master")
            self.buf += data
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def final(self, request_id) -> dict:
        while True:
            answer = self.answer()
            if answer.get("id") == request_id and answer["status"] != "PROCESSING":
                return answer

    def closed_by_peer(self) -> bool:
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def dump(path: str) -> dict:
    conn = Conn(path)
    try:
        conn.send({"id": "dump", "version": 0, "type": "DUMP_STATE"})
        answer = conn.final("dump")
    finally:
        conn.close()
    assert answer["status"] == "OK", answer
    return answer["data"]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("command-socket")
    backend = Backend("b1")
    port = free_port()
    s = Sozu(tmp, http_config(tmp, port, [backend.port],
                              extra=f"max_command_message_size = {MAX_SIZE}"))
    try:
        s.start()
        s.port = port
        yield s
    finally:
        s.stop()
        backend.stop()


def assert_serving(proxy, within: float = 1.0) -> None:
    """The master answers a fresh client, quickly."""
    started = time.monotonic()
    answer = proxy.command({"id": "alive", "version": 0, "type": "LIST_WORKERS"}, timeout=within)
    assert answer["status"] == "OK"
    assert time.monotonic() - started < within


# -- the socket file -----------------------------------------------------------------------------

def test_socket_is_a_private_unix_socket(proxy):
    mode = os.stat(proxy.socket_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_stale_socket_is_replaced_and_a_live_one_is_refused(tmp_path):
    path = tmp_path / "sozu.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a file left by a master that died: nobody listens on it
    stale.close()
    first = Sozu(tmp_path, http_config(tmp_path, free_port(), [free_port()], worker_count=1))
    second = Sozu(tmp_path, http_config(tmp_path, free_port(), [free_port()], worker_count=1),
                  name="second")
    try:
        first.start()
        assert first.order("STATUS")["status"] == "OK"
        second.start(wait=False)
        assert second.wait_exit(15) == 1
        assert f"sozu: the command socket {path} is in use by a running sozu" in second.log()
        assert "Traceback" not in second.log()
        assert first.order("STATUS")["status"] == "OK"  # the refused start took nothing away
        assert path.exists()
    finally:
        first.stop()
        second.stop()


def test_a_command_socket_that_cannot_be_bound_is_named(tmp_path):
    path = tmp_path / "missing" / "sozu.sock"
    config = http_config(tmp_path, free_port(), [free_port()], worker_count=1).replace(
        f'command_socket = "{tmp_path}/sozu.sock"', f'command_socket = "{path}"')
    sozu = Sozu(tmp_path, config)
    try:
        sozu.start(wait=False)
        assert sozu.wait_exit(15) == 1
        assert f"sozu: cannot serve the command socket {path}: No such file or directory" in sozu.log()
        assert "Traceback" not in sozu.log()
    finally:
        sozu.stop()


# -- framing and concurrency ---------------------------------------------------------------------

def test_several_messages_on_one_connection_in_one_write(proxy):
    conn = Conn(proxy.socket_path)
    try:
        conn.send(b"".join(json.dumps(m).encode() + b"\0" for m in (
            {"id": "a", "version": 0, "type": "LIST_WORKERS"},
            {"id": "b", "version": 0, "type": "PROXY", "data": {"type": "STATUS"}},
            {"id": "c", "version": 0, "type": "DUMP_STATE"})))
        answers = {}
        while len(answers) < 3:
            answer = conn.answer()
            if answer["status"] != "PROCESSING":
                answers[answer["id"]] = answer
        assert {k: a["status"] for k, a in answers.items()} == {"a": "OK", "b": "OK", "c": "OK"}
        # and the connection stays usable for more, one byte at a time
        for byte in json.dumps({"id": "d", "version": 0, "type": "LIST_WORKERS"}).encode() + b"\0":
            conn.send(bytes([byte]))
        assert conn.final("d")["status"] == "OK"
    finally:
        conn.close()


def test_a_hundred_clients_at_once(proxy):
    before = dump(proxy.socket_path)
    results, errors = [], []
    barrier = threading.Barrier(100)

    def client(i: int) -> None:
        try:
            conn = Conn(proxy.socket_path, timeout=10)
            barrier.wait(10)
            # half of them ask the workers (a fan-out), half only the master
            request = ({"id": f"c{i}", "version": 0, "type": "PROXY",
                        "data": {"type": "QUERY", "data": {"type": "APPLICATIONS_HASHES"}}}
                       if i % 2 else {"id": f"c{i}", "version": 0, "type": "LIST_WORKERS"})
            conn.send(request)
            results.append(conn.final(f"c{i}")["status"])
            conn.close()
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(repr(error))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert results == ["OK"] * 100
    assert dump(proxy.socket_path) == before


# -- bad input -----------------------------------------------------------------------------------

BAD_MESSAGES = {
    "garbage": (b"\x01\x02garbage\xff\xfe", "not valid UTF-8"),
    "invalid JSON": (b'{"id": "x", "type": ', "not valid JSON"),
    "not an object": (b'[1, 2, 3]', "expected a JSON object"),
    "NaN": (b'{"id": "x", "version": 0, "type": "DUMP_STATE", "data": NaN}', "not valid JSON"),
    "unknown request type": ({"id": "x", "version": 0, "type": "FROBNICATE"},
                             "unknown request type"),
    "unknown order type": ({"id": "x", "version": 0, "type": "PROXY",
                            "data": {"type": "ADD_UNICORN", "data": {}}}, "unknown order type"),
    "missing id": ({"version": 0, "type": "LIST_WORKERS"}, "id: missing required field"),
    "missing type": ({"id": "x", "version": 0}, "type: missing required field"),
    "missing order field": ({"id": "x", "version": 0, "type": "PROXY",
                             "data": {"type": "ADD_BACKEND",
                                      "data": {"app_id": "app", "backend_id": "z"}}},
                            "address: missing required field"),
    "ill-typed field": ({"id": "x", "version": 0, "type": "PROXY",
                         "data": {"type": "ADD_APPLICATION",
                                  "data": {"app_id": "new", "sticky_session": "yes"}}},
                        "sticky_session: expected a boolean"),
    "bad address": ({"id": "x", "version": 0, "type": "PROXY",
                     "data": {"type": "ADD_BACKEND",
                              "data": {"app_id": "app", "backend_id": "z",
                                       "address": "localhost:80"}}}, "IP:PORT"),
    "unknown field": ({"id": "x", "version": 0, "type": "LIST_WORKERS", "colour": "blue"},
                      "colour: unknown field"),
    "worker_id ill-typed": ({"id": "x", "version": 0, "type": "LIST_WORKERS", "worker_id": "0"},
                            "worker_id"),
    "null order": ({"id": "x", "version": 0, "type": "PROXY", "data": None}, "expected an order"),
    "lone surrogate": (b'{"id": "x", "version": 0, "type": "PROXY", "data": {"type": '
                       b'"ADD_HTTP_LISTENER", "data": {"front": "127.0.0.1:1", '
                       b'"answer_404": "\\ud800"}}}', "surrogate"),
}


def assert_refused(proxy, message, expected: str) -> dict:
    """message gets an ERROR answer naming `expected` on its own connection, which goes on
    serving; the state is unchanged and the master serves others. Returns the answer."""
    before = dump(proxy.socket_path)
    conn = Conn(proxy.socket_path)
    try:
        conn.send(message + b"\0" if isinstance(message, bytes) else message)
        answer = conn.answer()
        assert answer["status"] == "ERROR", answer
        assert expected in answer["message"], answer
        # the same connection goes on: a good request after a bad one is answered
        conn.send({"id": "after", "version": 0, "type": "LIST_WORKERS"})
        assert conn.final("after")["status"] == "OK"
    finally:
        conn.close()
    assert dump(proxy.socket_path) == before
    assert_serving(proxy)
    return answer


@pytest.mark.parametrize("name", list(BAD_MESSAGES))
def test_bad_message_gets_an_error_and_changes_nothing(proxy, name):
    assert_refused(proxy, *BAD_MESSAGES[name])


def test_a_refused_order_reaches_no_worker_and_changes_nothing(proxy):
    before = dump(proxy.socket_path)
    answer = proxy.order("REMOVE_BACKEND", {"app_id": "app", "backend_id": "nope",
                                            "address": "127.0.0.1:9"})
    assert answer["status"] == "ERROR"
    assert answer["message"] == "no backend nope at 127.0.0.1:9 in application app"
    answer = proxy.order("ADD_HTTP_FRONT", {"app_id": "ghost", "address": f"127.0.0.1:{proxy.port}",
                                            "hostname": "ghost.example"})
    assert answer == {"id": answer["id"], "version": 0, "status": "ERROR",
                      "message": "no application ghost", "data": None}
    assert dump(proxy.socket_path) == before
    # the workers agree with the master: nothing reached them
    query = proxy.order("QUERY", {"type": "APPLICATIONS_HASHES"})
    assert all(hashes == query["data"]["master"] for hashes in query["data"]["workers"].values())


@pytest.mark.parametrize("terminated", [False, True], ids=["unterminated", "terminated"])
def test_oversize_message_closes_the_connection(proxy, terminated):
    before = dump(proxy.socket_path)
    conn = Conn(proxy.socket_path)
    try:
        big = b'{"id": "big", "version": 0, "type": "LIST_WORKERS", "data": "' + b"x" * (MAX_SIZE + 10)
        try:
            conn.send(big + (b'"}\0' if terminated else b""))
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still writing: that is the answer
        assert conn.closed_by_peer()
    finally:
        conn.close()
    assert dump(proxy.socket_path) == before
    assert_serving(proxy)


def test_deeply_nested_json_is_refused(proxy):
    conn = Conn(proxy.socket_path)
    try:
        conn.send(b"[" * 30_000 + b"]" * 30_000 + b"\0")
        answer = conn.answer()
        assert answer["status"] == "ERROR" and "not valid JSON" in answer["message"]
    finally:
        conn.close()
    assert_serving(proxy)


def test_messages_before_an_oversize_one_are_still_answered(proxy):
    conn = Conn(proxy.socket_path)
    try:
        conn.send(b'{"id": "first", "version": 0, "type": "LIST_WORKERS"}\0' + b"y" * (MAX_SIZE + 10))
        assert conn.final("first")["status"] == "OK"
        assert conn.closed_by_peer()
    finally:
        conn.close()


def test_a_stalled_client_blocks_nobody(proxy):
    stalled = Conn(proxy.socket_path)
    stalled.send(b'{"id": "half", "version": 0, "type": "LIST_')  # ... and nothing more
    deaf = Conn(proxy.socket_path)
    try:
        # a client that sends requests and never reads its answers
        request = json.dumps({"id": "d", "version": 0, "type": "DUMP_STATE"}).encode() + b"\0"
        deaf.sock.settimeout(0.5)
        try:
            for _ in range(2000):
                deaf.sock.sendall(request)
        except (socket.timeout, BlockingIOError, BrokenPipeError, ConnectionResetError):
            pass  # its buffers are full, or the master dropped it: either way it waits alone
        for _ in range(5):
            assert_serving(proxy, within=0.5)
        # the stalled client finishes its message later, and is answered then
        stalled.send(b'WORKERS"}\0')
        assert stalled.final("half")["status"] == "OK"
    finally:
        stalled.close()
        deaf.close()
    assert_serving(proxy)


def test_a_client_gone_mid_message_or_mid_answer_changes_nothing(proxy):
    before = dump(proxy.socket_path)
    for _ in range(20):
        conn = Conn(proxy.socket_path)
        conn.send(b'{"id": "gone", "version": 0, "type": "PROXY", "data": {"type": "ADD_APPLICA')
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # a reset, mid-message
    for _ in range(20):  # gone before its answers: the fan-out finishes for nobody
        conn = Conn(proxy.socket_path)
        conn.send({"id": "q", "version": 0, "type": "PROXY", "data": {"type": "METRICS"}})
        conn.close()
    assert dump(proxy.socket_path) == before
    assert_serving(proxy)
    assert proxy.process.poll() is None
    assert "error in the master loop" not in proxy.log()


def test_sozuctl_on_a_missing_socket_says_where(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(http_config(tmp_path, free_port(), [free_port()]))
    out = subprocess.run([PYTHON, str(ROOT / "sozuctl.py"), "-c", str(config), "status"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 2
    assert str(tmp_path / "sozu.sock") in out.stderr
    assert "Traceback" not in out.stderr



# An id the ERROR answer can repeat (a string, a finite number) is repeated; any other (1e999
# is infinity once decoded, and JSON has no infinity to answer with) is answered with "".
BAD_IDS = {
    "infinite": (b"1e999", ""),
    "negative infinite": (b"-1e999", ""),
    "a list": (b"[1]", ""),
    "an object": (b'{"a": 1}', ""),
    "a boolean": (b"true", ""),
    "null": (b"null", ""),
    "a finite number": (b"7", 7),
}


@pytest.mark.parametrize("name", list(BAD_IDS))
def test_an_id_that_is_not_a_string_is_refused_on_its_own_connection(proxy, name):
    raw_id, answered_id = BAD_IDS[name]
    message = b'{"id": ' + raw_id + b', "version": 0, "type": "LIST_WORKERS"}'
    answer = assert_refused(proxy, message, "id: expected a string")
    assert answer["id"] == answered_id, answer
    assert "error in the master loop" not in proxy.log()
