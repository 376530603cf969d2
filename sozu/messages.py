"""Orders, command requests and answers, and the NUL-terminated JSON framing (pure).

STUB: the full schema validation lands with docs/orders.md; Order's shape is fixed here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class MessageError(ValueError):
    """A message or order that does not fit the protocol; the text names the field."""


@dataclass(frozen=True)
class Order:
    type: str
    data: Any = None

    def to_json(self) -> dict:
        return {"type": self.type, "data": self.data}
