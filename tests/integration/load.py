"""Client load for the process tests and the soak: real HTTP clients in threads, counting what
a user would count as a failed request.

A keep-alive client may find that the server closed its connection while it was idle (a
draining worker does that): like browsers and curl, it then opens a new connection and sends
the request again. That is the only retry allowed, and it is counted apart:
  - before sending on a reused connection, the client looks whether the server closed it
    (readable, and reading would give EOF): it reconnects, as a browser does;
  - when a request sent on a reused connection gets no byte of an answer at all (the server
    closed it at the same moment), it is sent once more on a new connection.
Everything else is a failure: a connect error, a status other than the expected one, an answer
cut short, a retry that fails, anything on a connection that was just opened.
"""
from __future__ import annotations

import http.client
import select
import socket
import threading
import time


class LoadClient(threading.Thread):
    def __init__(self, port: int, host: str = "localhost", paths=("/",), keep_alive: bool = True,
                 expect: int = 200, timeout: float = 10.0, pause: float = 0.0, name: str = "load"):
        super().__init__(daemon=True, name=name)
        self.port, self.host, self.paths = port, host, paths
        self.keep_alive, self.expect, self.timeout, self.pause = keep_alive, expect, timeout, pause
        self.ok = 0
        self.failures: list[str] = []
        self.idle_closed = 0   # reused connection found closed before sending: reconnected
        self.retries = 0       # reused connection closed without any answer: sent again
        self.latencies: list[float] = []
        self.running = threading.Event()
        self.running.set()
        self.conn: http.client.HTTPConnection | None = None
        self.reused = False

    def stop(self) -> None:
        self.running.clear()
        self.join(self.timeout + 5)

    def summary(self) -> str:
        return (f"{self.name}: {self.ok} ok, {len(self.failures)} failed, {self.idle_closed} "
                f"reconnects after an idle close, {self.retries} retries")

    def run(self) -> None:
        i = 0
        while self.running.is_set():
            path = self.paths[i % len(self.paths)]
            i += 1
            started = time.monotonic()
            try:
                self.one(path)
            except Exception as error:  # a failure, recorded with what happened
                self.failures.append(f"{time.strftime('%H:%M:%S')} {path}: {type(error).__name__}: {error}")
                self.close()
            else:
                self.ok += 1
                self.latencies.append(time.monotonic() - started)
            if self.pause:
                time.sleep(self.pause)
        self.close()

    def one(self, path: str) -> None:
        if not self.keep_alive:
            self.close()
        elif self.conn is not None and _closed_by_peer(self.conn.sock):
            self.idle_closed += 1
            self.close()
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self.reused = False
        headers = {"Host": self.host}
        if not self.keep_alive:
            headers["Connection"] = "close"
        try:
            status, body_ok, closing = self.exchange(path, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not self.reused:
                raise
            self.retries += 1  # closed at the moment we reused it: as curl does, once more
            self.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self.reused = False
            status, body_ok, closing = self.exchange(path, headers)
        if status != self.expect:
            raise AssertionError(f"status {status}, expected {self.expect}")
        if not body_ok:
            raise AssertionError("answer cut short")
        if closing or not self.keep_alive:
            self.close()
        else:
            self.reused = True

    def exchange(self, path: str, headers: dict):
        self.conn.request("GET", path, headers=headers)
        response = self.conn.getresponse()  # RemoteDisconnected: not a byte of an answer
        try:  # past the status line, nothing is retried
            body = response.read()
        except http.client.IncompleteRead as error:
            raise AssertionError(f"answer cut short after {len(error.partial)} bytes") from None
        except OSError as error:
            raise AssertionError(f"answer cut short: {error}") from None
        length = response.getheader("Content-Length")
        body_ok = length is None or int(length) == len(body)
        return response.status, body_ok, response.will_close

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _closed_by_peer(sock) -> bool:
    """The server closed this idle connection (or reset it): EOF is waiting to be read."""
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class Load:
    """Several clients started and stopped together."""

    def __init__(self, *clients: LoadClient):
        self.clients = clients

    def __enter__(self) -> "Load":
        for client in self.clients:
            client.start()
        return self

    def __exit__(self, *exc) -> None:
        for client in self.clients:
            client.stop()

    @property
    def ok(self) -> int:
        return sum(c.ok for c in self.clients)

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {f}" for c in self.clients for f in c.failures]

    def summary(self) -> str:
        return "; ".join(c.summary() for c in self.clients)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (sozu's masters and workers share the first master's)."""
    members = []
    for entry in _proc_pids():
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(entry)
    return members


def _proc_pids():
    import os
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used, user and system, in seconds."""
    import os
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def listening_inode(port: int) -> int | None:
    """The inode of the socket listening on 127.0.0.1:port: the same one before and after an
    upgrade proves that it was handed over, not bound again."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as file:
        for line in file.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
                return int(fields[9])
    return None
