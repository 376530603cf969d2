"""The load board: how full each worker is, shared by all the workers of one generation.

A worker at its connection limit stops accepting (its gevent Pool is full), so a new connection
waits in the listening socket's backlog for a sibling with room. Only when *every* worker is
full must someone answer it, and quickly: then a full worker accepts it and refuses it at once,
without a buffer or a greenlet from its pool. To know that every worker is full, each one writes
its open-connection count and its limit into a small shared memory map created by the master
before the first fork; the master clears a slot when its worker is gone for good.
"""
from __future__ import annotations

import mmap
import struct

_SLOT = struct.Struct("=ii")  # open connections, limit (0: no worker in this slot)


class LoadBoard:
    def __init__(self, slots: int):
        self.slots = slots
        self.map = mmap.mmap(-1, _SLOT.size * slots)  # anonymous and MAP_SHARED: seen across fork

    def publish(self, slot: int, connections: int, limit: int) -> None:
        _SLOT.pack_into(self.map, slot * _SLOT.size, connections, limit)

    def clear(self, slot: int) -> None:
        self.publish(slot, 0, 0)

    def everyone_full(self) -> bool:
        seen = False
        for slot in range(self.slots):
            connections, limit = _SLOT.unpack_from(self.map, slot * _SLOT.size)
            if limit:
                seen = True
                if connections < limit:
                    return False
        return seen
