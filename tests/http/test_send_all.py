"""send_all: a head and the start of its body leave in one gathered send, and whatever part a
partial send leaves behind is sent next, once and in order."""
import pytest

from sozu.http.sockio import send_all


class Recorder:
    """A socket that takes at most `first` bytes from the first send, then everything."""

    def __init__(self, first: int, gathers: bool = True):
        self.first, self.stream, self.calls = first, bytearray(), []
        if gathers:
            self.sendmsg = self._sendmsg

    def _take(self, data, name):
        self.calls.append(name)
        taken = bytes(data)[:self.first] if len(self.calls) == 1 else bytes(data)
        self.stream += taken
        return len(taken)

    def _sendmsg(self, parts):
        return self._take(b"".join(bytes(p) for p in parts), "sendmsg")

    def send(self, data):
        return self._take(data, "send")

    def sendall(self, data):
        self._take(data, "sendall")


HEAD, BODY = b"HTTP/1.1 200 OK\r\n\r\n", bytes(range(256)) * 4


@pytest.mark.parametrize("first", [0, 1, len(HEAD) - 1, len(HEAD), len(HEAD) + 1, 500, 10**6])
def test_every_byte_once_and_in_order_whatever_the_first_send_took(first):
    sock = Recorder(first)
    send_all(sock, HEAD, memoryview(BODY))
    assert sock.stream == HEAD + BODY
    assert sock.calls[0] == "sendmsg"
    assert len(sock.calls) == (1 if first >= len(HEAD + BODY) else 2 if first >= len(HEAD) else 3)


def test_a_socket_without_sendmsg_gets_the_parts_joined():
    sock = Recorder(7, gathers=False)
    send_all(sock, HEAD, memoryview(BODY))
    assert sock.stream == HEAD + BODY and sock.calls == ["send", "sendall"]


def test_one_part_is_one_send():
    sock = Recorder(10**6)
    send_all(sock, HEAD)
    assert sock.stream == HEAD and sock.calls == ["send"]
