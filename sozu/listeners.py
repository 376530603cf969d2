"""Listening sockets: bound once by the master, inherited by workers and by the next master.

A listener is bound before any worker is forked, so every worker accepts on the same socket and
the kernel spreads connections between them. The sockets are inheritable so that an upgrade can
re-execute the master and keep them; their numbers travel in SOZU_LISTENER_FDS as
`address=fd;address=fd` (DESIGN.md §8). No socket here is ever `shutdown()`: that would stop it in
every process sharing it, including the next generation.
"""
from __future__ import annotations

import os
import socket

from sozu import address as addresses

ENV_FDS = "SOZU_LISTENER_FDS"
BACKLOG = 1024


def sockaddr(address: str) -> tuple[int, tuple]:
    """'127.0.0.1:80' -> (AF_INET, ('127.0.0.1', 80)); '[::1]:80' -> (AF_INET6, ('::1', 80)).
    The address is in sozu.address's normal form (the config file and the orders give no other)."""
    ip, port = addresses.split(address)
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), (str(ip), port)


def connect(address: str, timeout: float, socket_class=socket.socket):
    """A connection to a numeric IP:PORT (never a name lookup: workers may be chrooted), with
    Nagle off: the proxy writes whole messages and must not wait for acknowledgements. Workers
    pass gevent's socket class."""
    family, addr = sockaddr(address)
    connection = socket_class(family, socket.SOCK_STREAM)
    connection.settimeout(timeout)
    try:
        connection.connect(addr)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        connection.close()
        raise
    return connection


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
    """The listening sockets handed over by the previous master, by address."""
    return {address: socket.socket(fileno=fd) for address, fd in decode_fds(environ.get(ENV_FDS, "")).items()}
