"""The command socket's client connection, without a master: what it does with an answer that
cannot be sent."""
import socket

from sozu.command_socket import Client


def test_an_answer_that_is_not_json_closes_its_client_instead_of_raising():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        client = Client(ours, 65536)
        client.send({"id": float("inf"), "version": 0, "status": "ERROR", "message": "", "data": None})
        assert client.closed and not client.outbox
        client.send({"id": "next", "version": 0, "status": "OK", "message": "", "data": None})
        assert not client.outbox, "nothing more is sent to a closed client"
