"""sozuctl's side of the command socket: one connection, one request, answers until the last.

The master may answer PROCESSING any number of times before the final OK or ERROR; answers that
carry another id (events, a previous client's leftovers) are ignored. Every way the exchange can
fail without an answer (no socket, refused, closed early, garbage, too slow) is a ProxyUnreachable,
which sozuctl turns into exit status 2.
"""
from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable

from sozu.messages import Decoder, MessageError, Request, encode

# A dump of a large state is one answer; the client trusts its own proxy up to this size.
MAX_ANSWER_SIZE = 256 * 1024 * 1024
FINAL_STATUSES = ("OK", "ERROR")


class ProxyUnreachable(Exception):
    """No final answer from the proxy; str() is the one line to show."""


def new_request_id() -> str:
    return f"sozuctl-{os.getpid()}-{secrets.token_hex(4)}"


class Client:
    def __init__(self, socket_path: str, timeout_ms: int):
        self.socket_path = socket_path
        self.timeout_ms = timeout_ms

    def send(self, request: Request,
             on_processing: Callable[[dict], None] | None = None) -> dict:
        """Send one request and return its final answer (status OK or ERROR)."""
        deadline = time.monotonic() + self.timeout_ms / 1000
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._connect(sock, deadline)
            try:
                sock.settimeout(self._remaining(deadline))
                sock.sendall(encode(request.to_json()))
                return self._read_answer(sock, request.id, deadline, on_processing)
            except TimeoutError:
                raise self._timeout() from None
            except OSError as e:
                raise self._unreachable(e.strerror or str(e)) from None
        finally:
            sock.close()

    def _connect(self, sock: socket.socket, deadline: float) -> None:
        try:
            sock.settimeout(self._remaining(deadline))
            sock.connect(self.socket_path)
        except TimeoutError:
            raise self._timeout() from None
        except OSError as e:
            raise self._unreachable(e.strerror or str(e)) from None

    def _read_answer(self, sock, request_id, deadline, on_processing) -> dict:
        decoder = Decoder(MAX_ANSWER_SIZE)
        while True:
            sock.settimeout(self._remaining(deadline))
            chunk = sock.recv(65536)
            if not chunk:
                raise self._unreachable("the connection was closed before the answer")
            try:
                messages = decoder.feed(chunk)
            except MessageError as e:  # over the size limit
                raise self._unreachable(f"malformed answer: {e}") from None
            for message in messages:
                if isinstance(message, MessageError):
                    raise self._unreachable(f"malformed answer: {message}")
                if not isinstance(message, dict) or message.get("id") != request_id:
                    continue
                status = message.get("status")
                if status in FINAL_STATUSES:
                    return message
                if status != "PROCESSING":
                    raise self._unreachable(f"answer with an unknown status {status!r}")
                if on_processing is not None:
                    on_processing(message)

    def _remaining(self, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    def _unreachable(self, reason: str) -> ProxyUnreachable:
        return ProxyUnreachable(f"cannot reach the proxy at {self.socket_path}: {reason}")

    def _timeout(self) -> ProxyUnreachable:
        return ProxyUnreachable(
            f"no answer from the proxy at {self.socket_path} within {self.timeout_ms} ms")
