"""A small blocking HTTP/2 client on the `h2` library, for the tests that need to send what
curl and nghttp never would: malformed requests, resets, floods, raw frames."""
from __future__ import annotations

import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


class Closed(Exception):
    pass


class Response:
    def __init__(self):
        self.headers: list[tuple[bytes, bytes]] = []
        self.informational: list[list[tuple[bytes, bytes]]] = []
        self.body = bytearray()
        self.trailers: list[tuple[bytes, bytes]] = []
        self.ended = False
        self.reset: int | None = None  # the error code of a RST_STREAM from the server

    @property
    def status(self) -> int | None:
        for name, value in self.headers:
            if name == b":status":
                return int(value)
        return None

    def header(self, name: bytes):
        return next((value for key, value in self.headers if key == name), None)

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class H2Client:
    def __init__(self, port: int, ca_path, host: str = "a.test", settings: dict | None = None,
                 timeout: float = 10.0, validate: bool = True):
        context = ssl.create_default_context(cafile=str(ca_path))
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.host = host
        config = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                           validate_outbound_headers=validate,
                                           normalize_outbound_headers=validate,
                                           validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config)
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.flush()
        self.responses: dict[int, Response] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.events: list = []

    # -- sending ---------------------------------------------------------------------------
    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def send_raw(self, data: bytes) -> None:
        self.flush()
        self.sock.sendall(data)

    def request_headers(self, path: str = "/", method: str = "GET", extra=(), authority=None):
        return [(b":method", method.encode()), (b":scheme", b"https"), (b":path", path.encode()),
                (b":authority", (authority or self.host).encode()), *extra]

    def start(self, path: str = "/", method: str = "GET", extra=(), body: bytes | None = None,
              end: bool = True, headers=None) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.responses[stream_id] = Response()
        headers = headers if headers is not None else self.request_headers(path, method, extra)
        self.conn.send_headers(stream_id, headers, end_stream=end and not body)
        if body:
            self.conn.send_data(stream_id, body, end_stream=end)
        self.flush()
        return stream_id

    def get(self, path: str = "/", method: str = "GET", extra=(), body: bytes | None = None,
            timeout: float = 10.0) -> Response:
        stream_id = self.start(path, method, extra, body)
        return self.wait(stream_id, timeout)

    # -- receiving -------------------------------------------------------------------------
    def wait(self, stream_id: int, timeout: float = 10.0) -> Response:
        self.pump_until(lambda: self.responses[stream_id].done, timeout)
        return self.responses[stream_id]

    def pump_until(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.closed:
                raise Closed(f"the server closed the connection (GOAWAY: {self.goaway})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer in time")
            self.pump(remaining)

    def pump(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        except (ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            self.events.append(event)
            response = self.responses.get(getattr(event, "stream_id", None))
            if isinstance(event, h2.events.ResponseReceived):
                response.headers = event.headers
            elif isinstance(event, h2.events.InformationalResponseReceived):
                response.informational.append(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                response.body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                response.trailers = event.headers
            elif isinstance(event, h2.events.StreamEnded) and response is not None:
                response.ended = True
            elif isinstance(event, h2.events.StreamReset) and response is not None:
                response.reset = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
        self.flush()

    def wait_closed(self, timeout: float = 10.0) -> None:
        """Until the server closes the connection (reading everything on the way)."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the server kept the connection open")
            try:
                self.pump(remaining)
            except h2.exceptions.ProtocolError:
                pass  # frames after its GOAWAY: the closing is what counts

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
