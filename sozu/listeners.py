"""Listening sockets, from binding to closing, in the master and in the workers.

Theory of operation
-------------------
This module owns the life of a listening socket; the master and the workers only call it.

- Binding: the master binds every listener of the state before any worker is forked
  (ListenerSockets.open), so every worker accepts on the same socket and the kernel spreads
  connections between them. A listener added at runtime is bound when its ADD_*_LISTENER order
  is applied, before the state takes it (a port in use refuses the order), and released again
  if the state refuses it.
- Handed to workers: a forked worker inherits the master's sockets (for_worker); one added at
  runtime travels to the running workers as SCM_RIGHTS with the order that adds it
  (fds_for, sozu.channel), and the worker adopts it (WorkerSockets.adopt). for_worker and
  fds_for take the worker: today every worker gets the same socket, and a socket of its own
  per listener (SO_REUSEPORT) would change these two and nothing else.
- DEACTIVATE_LISTENER: the workers stop serving it (their StreamServers close); every copy of
  the socket stays open, so ACTIVATE_LISTENER serves it again without binding.
- REMOVE_LISTENER: the master retires its socket, and closes it at the end of the request that
  removed it (close_retired): when the same request adds the address again (a LOAD_STATE that
  changes a listener's settings) the socket is reused, because the workers still listen on
  their copies while the orders travel, and binding anew would fail with "address in use". The
  workers close their copies once the order is applied (WorkerSockets.forget).
- Stopping: the master closes its copies (new connections are refused, not queued for nobody);
  a draining worker closes its own (WorkerSockets.close_all).
- Upgrade: the sockets are inheritable and their numbers travel to the new master in
  SOZU_LISTENER_FDS as `address=fd;address=fd` (handover, then inherit in the new master,
  which closes those no longer configured); they are never re-bound.

No socket here is ever `shutdown()`: that would stop it in every process sharing it, including
the next generation.
"""
from __future__ import annotations

import os
import socket

from sozu.address import sockaddr

ENV_FDS = "SOZU_LISTENER_FDS"
BACKLOG = 1024


def bind(address: str, backlog: int = BACKLOG) -> socket.socket:
    family, addr = sockaddr(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def encode_fds(sockets: dict[str, socket.socket]) -> str:
    return ";".join(f"{address}={sock.fileno()}" for address, sock in sockets.items())


def decode_fds(value: str) -> dict[str, int]:
    result = {}
    for item in filter(None, value.split(";")):
        address, _, fd = item.rpartition("=")
        result[address] = int(fd)
    return result


def inherited(environ=os.environ) -> dict[str, socket.socket]:
    """The listening sockets handed over by the previous master, by address; the variable is
    removed, so that it leaks neither into the workers nor into a later upgrade."""
    return {address: socket.socket(fileno=fd) for address, fd in decode_fds(environ.pop(ENV_FDS, "")).items()}


def is_listener_order(order) -> bool:
    return order.type.startswith("ADD_") and order.type.endswith("_LISTENER")


class ListenerSockets:
    """The master's listening sockets, by address."""

    def __init__(self, sockets: dict[str, socket.socket]):
        self.sockets = sockets
        self.retired: dict[str, socket.socket] = {}  # removed by the request being applied

    @classmethod
    def open(cls, addresses, environ=os.environ) -> "ListenerSockets":
        """The state's listeners: handed over by the previous master, else bound now. OSError
        names the address that cannot be bound."""
        handed_over = inherited(environ)
        sockets = {}
        try:
            for address in addresses:
                sock = handed_over.pop(address, None)
                if sock is None:
                    try:
                        sock = bind(address)
                    except OSError as error:
                        raise OSError(f"cannot listen on {address}: {error.strerror}") from None
                sockets[address] = sock
        finally:
            for sock in handed_over.values():  # handed over, but no longer configured
                sock.close()
        return cls(sockets)

    # -- orders ----------------------------------------------------------------------------------
    def before(self, order, state_listeners) -> str | None:
        """Before the state applies `order`: an added listener is bound (or its retired socket
        taken back). Returns the address bound for it, to release should the state refuse it;
        OSError when it cannot be bound."""
        if not is_listener_order(order):
            return None
        address = order.data["front"]
        if address in self.sockets or address in state_listeners:
            return None
        retired = self.retired.pop(address, None)
        self.sockets[address] = retired if retired is not None else bind(address)
        return address

    def after(self, order) -> None:
        """The state applied `order`: a removed listener's socket is retired."""
        if order.type == "REMOVE_LISTENER":
            self.retire(order.data["front"])

    def retire(self, address: str) -> None:
        sock = self.sockets.pop(address, None)
        if sock is not None:
            self.retired[address] = sock

    def close_retired(self) -> None:
        """At the end of the request that removed them."""
        for sock in self.retired.values():
            sock.close()
        self.retired.clear()

    # -- workers ---------------------------------------------------------------------------------
    def for_worker(self, worker_id: int) -> dict[str, socket.socket]:
        """The sockets a worker forked now serves."""
        return self.sockets

    def fds_for(self, worker_id: int, order) -> tuple[int, ...]:
        """The descriptors that travel with `order` to a running worker: the socket of a
        listener it adds."""
        if is_listener_order(order):
            return (self.sockets[order.data["front"]].fileno(),)
        return ()

    # -- upgrade and stop ------------------------------------------------------------------------
    def handover(self) -> dict[str, str]:
        """The environment that hands the sockets to a new master (posix_spawn keeps them)."""
        for sock in self.sockets.values():
            sock.set_inheritable(True)
        return {ENV_FDS: encode_fds(self.sockets)}

    def close_all(self) -> None:
        """The master stops: its copies close (the workers close theirs; a newer generation
        keeps its own)."""
        for sock in list(self.sockets.values()) + list(self.retired.values()):
            sock.close()
        self.sockets.clear()
        self.retired.clear()


class WorkerSockets:
    """A worker's copies of the listening sockets, as `socket_class` (gevent's, in a worker),
    each with a plain non-blocking duplicate, the refuser, to refuse connections while every
    worker is full without going through the accept loop (docs/architecture.md)."""

    def __init__(self, sockets: dict[str, socket.socket], socket_class):
        self.socket_class = socket_class
        self.sockets: dict[str, socket.socket] = {}
        self.refusers: dict[str, socket.socket] = {}
        for address, sock in sockets.items():
            self._keep(address, socket_class(sock.family, sock.type, fileno=sock.detach()))

    def adopt(self, address: str, fds: list[int]) -> None:
        """A listener added at runtime: the descriptor that came with its order."""
        if fds:
            self._keep(address, self.socket_class(fileno=fds[0]))

    def forget(self, addresses) -> None:
        """Listeners the state no longer has: this worker's copies close."""
        for address in [a for a in self.sockets if a not in addresses]:
            self.sockets.pop(address).close()
            self.refusers.pop(address).close()

    def close_all(self) -> None:
        """A draining worker: once no process holds a listening socket, new connections are
        refused at once instead of waiting in its backlog for nobody."""
        for sock in list(self.sockets.values()) + list(self.refusers.values()):
            sock.close()
        self.sockets.clear()
        self.refusers.clear()

    def _keep(self, address: str, sock) -> None:
        self.sockets[address] = sock
        refuser = socket.socket(fileno=os.dup(sock.fileno()))
        refuser.setblocking(False)
        self.refusers[address] = refuser
