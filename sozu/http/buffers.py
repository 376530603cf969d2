"""Large body buffers that a worker lends to the sessions copying large bodies (pure).

Why: a body copied in buffer_size pieces (16 KiB) costs a recv and a send per piece, and on
loopback every send also wakes the receiving process: for a 1 MiB response, 128 system calls
and 64 wake-ups. Read into a buffer of 16 pieces at once (like nginx's `proxy_buffers 16 16k`),
the same body takes 8 of each, and the CPU per megabyte halves. A bytearray that large cannot be
allocated per body (it is zero-filled, and malloc maps and unmaps it each time), so the worker
keeps them.

Bounds: at most `max_lent` buffers are out at once, so memory stays bounded however many
clients read slowly (a session that cannot borrow one copies in buffer_size pieces, as before);
at most `max_idle` are kept between uses, so a worker at rest stays small.
"""
from __future__ import annotations

PIECES = 16  # buffer_size pieces in one large buffer
MAX_LENT_BYTES = 16 * 1024 * 1024  # per worker
MAX_IDLE = 8


class BodyBuffers:
    def __init__(self, buffer_size: int, pieces: int = PIECES,
                 max_lent_bytes: int = MAX_LENT_BYTES, max_idle: int = MAX_IDLE):
        self.size = buffer_size * pieces
        self.max_lent = max(1, max_lent_bytes // self.size)
        self.max_idle = max_idle
        self.idle: list[memoryview] = []
        self.lent = 0

    def take(self) -> memoryview | None:
        """A buffer, or None when max_lent are out already."""
        if self.lent >= self.max_lent:
            return None
        self.lent += 1
        return self.idle.pop() if self.idle else memoryview(bytearray(self.size))

    def give(self, buffer: memoryview) -> None:
        self.lent -= 1
        if len(self.idle) < self.max_idle:
            self.idle.append(buffer)
