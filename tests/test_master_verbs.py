"""The master's verbs in-process, without workers: what apply and start_upgrade refuse, and what
they leave behind (docs/architecture.md, "The master's verbs")."""
from __future__ import annotations

import os
import socket

import pytest

from sozu import config as config_module
from sozu.listeners import ListenerSockets
from sozu.master import Master
from sozu.messages import MessageError, Order
from sozu.state import ConfigState, StateError


class NoCommandSocket:
    def serve(self, selector, on_message):
        raise AssertionError("not served in these tests")


@pytest.fixture
def master(tmp_path):
    path = tmp_path / "sozu.toml"
    path.write_text('command_socket = "sozu.sock"\nworker_count = 1\n')
    master = Master(config_module.load(str(path)), ConfigState(), ListenerSockets({}), NoCommandSocket())
    yield master
    master.listeners.close_all()
    master.selector.close()
    os.close(master._wakeup_r)  # the loop's wake-up pipe, opened by the constructor
    os.close(master._wakeup_w)


def listener_order(port: int) -> Order:
    return Order.from_json({"type": "ADD_HTTP_LISTENER", "data": {"front": f"127.0.0.1:{port}"}})


def test_a_listener_order_binds_its_socket_and_a_refused_one_leaves_none(master):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    with busy:
        port = busy.getsockname()[1]
        applied, refusal = master.apply([listener_order(port)])
        assert applied == [] and isinstance(refusal, StateError)
        assert str(refusal).startswith(f"cannot listen on 127.0.0.1:{port}: ")
    assert master.listeners.sockets == {} and master.listeners.retired == {}
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    applied, refusal = master.apply([listener_order(port)])
    assert refusal is None and list(master.listeners.sockets) == [f"127.0.0.1:{port}"]
    removal = Order.from_json({"type": "REMOVE_LISTENER", "data": {"front": f"127.0.0.1:{port}", "proxy": "HTTP"}})
    assert master.apply([removal]) == ([removal], None)
    assert master.listeners.sockets == {} and master.listeners.retired == {}, "closed with its request"


def test_no_change_during_an_upgrade_and_no_upgrade_while_a_state_file_is_written(master):
    master.upgrade = object()
    with pytest.raises(MessageError, match="an upgrade is in progress"):
        master.apply([Order.from_json({"type": "ADD_APPLICATION", "data": {"app_id": "a"}})])
    master.upgrade = None
    master.saver.saves[12345] = object()  # a saving child not reaped yet
    with pytest.raises(MessageError, match="a state file is being written"):
        master.start_upgrade(lambda error, pid: None)
    master.saver.saves.clear()
