"""The command socket: sozuctl's connections, framed, read and written without blocking (master
only).

Theory of operation
-------------------
A unix stream socket (mode 0600) at `command_socket`, served by the master's selectors loop. Each
client has a Decoder and an outbox; reads and writes are non-blocking, so a client that stalls,
sends garbage or disconnects mid-message costs only its own connection. A message over the size
limit closes that connection; every other message, well formed or not, goes to on_message
(the command dispatcher, sozu.commands), which answers it through Client.send.

On an upgrade the socket itself is handed to the new master (SOZU_COMMAND_FD, sozu.upgrade):
the socket file stays where it is, and clients never see it missing. The master that serves
the socket last removes its file when it exits.
"""
from __future__ import annotations

import logging
import os
import selectors
import socket
import stat

from sozu.messages import Decoder, FrameTooLarge, answer, encode

log = logging.getLogger("sozu.command")

ENV_COMMAND_FD = "SOZU_COMMAND_FD"
# A client that reads nothing of what it asked for is dropped when it asks for more past this;
# one answer, however large (the DUMP_STATE of a large state), is always sent whole.
MAX_OUTBOX = 16 << 20


class Client:
    def __init__(self, sock, max_size: int):
        self.sock = sock
        self.decoder = Decoder(max_size)
        self.outbox = bytearray()
        self.closed = False
        self.subscribed: str | None = None  # request id of SUBSCRIBE_EVENTS

    def send(self, answer: dict) -> None:
        if self.closed:
            return
        if len(self.outbox) > MAX_OUTBOX:
            self.closed = True
            return
        try:
            frame = encode(answer)
        except (TypeError, ValueError):  # not JSON (a NaN): a bug; the client is closed, not left waiting
            log.exception("an answer that cannot be encoded: the command client is closed")
            self.closed = True
            return
        self.outbox += frame
        self.flush()

    def flush(self) -> None:
        while self.outbox and not self.closed:
            try:
                sent = self.sock.send(self.outbox)
            except BlockingIOError:
                break
            except OSError:
                self.closed = True
                return
            del self.outbox[:sent]


class CommandSocket:
    def __init__(self, path: str, sock: socket.socket, max_message_size: int):
        self.path = path
        self.sock = sock
        self.max_message_size = max_message_size
        self.selector = None
        self.on_message = None
        self.clients: dict[int, Client] = {}

    @classmethod
    def open(cls, config, environ=os.environ) -> "CommandSocket":
        """The socket an upgrade handed over, else a new one; OSError names the path."""
        inherited = environ.pop(ENV_COMMAND_FD, None)
        sock = socket.socket(fileno=int(inherited)) if inherited else _bind(config.command_socket)
        sock.setblocking(False)
        sock.set_inheritable(True)
        return cls(config.command_socket, sock, config.max_command_message_size)

    def serve(self, selector, on_message) -> None:
        """Accept clients from now on; on_message(client, message or MessageError) each."""
        self.selector, self.on_message = selector, on_message
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def stop_accepting(self) -> None:
        """A newer master serves the socket now; clients already here are still answered."""
        if self.selector is not None:
            try:
                self.selector.unregister(self.sock)
            except (KeyError, ValueError):
                log.debug("command socket already unregistered")
        self.sock.close()

    def close_in_child(self) -> None:
        for client in self.clients.values():
            client.sock.close()
        self.sock.close()

    def remove_socket_file(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            log.debug("command socket already removed")

    def publish_event(self, worker_id: int, data) -> None:
        """An event of a worker (a backend down or up), to every SUBSCRIBE_EVENTS client."""
        if not isinstance(data, dict):
            return
        event = dict(data, worker_id=worker_id)
        for client in self.clients.values():
            if client.subscribed is not None:
                client.send(answer(client.subscribed, "PROCESSING", data.get("kind", ""), event))

    def flush_clients(self) -> None:
        """Each loop turn: what answers were queued since (a broadcast settled) goes out."""
        for client in list(self.clients.values()):
            if client.outbox or client.closed:
                client.flush()
                self._update_interest(client)

    # -- clients -----------------------------------------------------------------------------
    def _accept(self, mask) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as error:
                log.warning("command socket accept failed: %s", error)
                return
            sock.setblocking(False)
            client = Client(sock, self.max_message_size)
            self.clients[sock.fileno()] = client
            self.selector.register(sock, selectors.EVENT_READ, lambda m, c=client: self._on_client(c, m))

    def _on_client(self, client: Client, mask) -> None:
        if mask & selectors.EVENT_WRITE:
            client.flush()
        if mask & selectors.EVENT_READ:
            self._read(client)
        self._update_interest(client)

    def _read(self, client: Client) -> None:
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            client.closed = True
            return
        try:
            messages = client.decoder.feed(data)
        except FrameTooLarge as error:
            for message in error.messages or []:
                self.on_message(client, message)
            log.warning("command client sent a message over %d bytes: closing it", self.max_message_size)
            client.closed = True
            return
        for message in messages:
            self.on_message(client, message)

    def _update_interest(self, client: Client) -> None:
        if client.closed:
            self._drop(client)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbox else 0)
        self.selector.modify(client.sock, events, self.selector.get_key(client.sock).data)

    def _drop(self, client: Client) -> None:
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            log.debug("command client already unregistered")
        self.clients.pop(client.sock.fileno(), None)
        client.sock.close()


def _bind(path: str) -> socket.socket:
    """Every failure is one OSError whose text names the path (start-up prints it)."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            pass  # stale: left by a master that is gone; replaced below
        else:
            raise OSError(f"the command socket {path} is in use by a running sozu")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # created 0600: the socket is the proxy's root shell
    try:
        if os.path.exists(path):
            os.unlink(path)
        sock.bind(path)
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise OSError(f"cannot serve the command socket {path}: {error.strerror or error}") from None
    finally:
        os.umask(old_umask)
    return sock
