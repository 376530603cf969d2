"""The configuration held in etcd, as keys under a prefix (pure; docs/etcd.md).

Theory of operation: one key per object, named by its category and its identity, whose value
is the order that adds it, in the command socket's JSON (`{"type": ..., "data": ...}`):

    PREFIX listeners/ADDRESS                ADD_HTTP_LISTENER | ADD_HTTPS_LISTENER | ADD_TCP_LISTENER
    PREFIX certificates/ADDRESS/NAME        ADD_CERTIFICATE
    PREFIX applications/APP_ID              ADD_APPLICATION
    PREFIX backends/APP_ID/NAME             ADD_BACKEND
    PREFIX health_checks/APP_ID             SET_HEALTH_CHECK
    PREFIX frontends/APP_ID/NAME            ADD_HTTP_FRONT | ADD_HTTPS_FRONT | ADD_TCP_FRONT

The state the keys describe is built by dispatching their orders into an empty ConfigState,
categories in the order above (what an object depends on comes first), keys sorted within a
category (so a host's regex rules are tried in the order of their keys). A listener is also
activated. A key whose value is not such an order, names another object than its key, or that
the state refuses (a frontend of an unknown application) is refused: it is left out, with
the reason, and the others are applied. `translate` and `keys_of` go both ways;
`ConfigState.diff` turns one state into the next.

Addresses: instances that share one configuration but listen on addresses of their own (their
host's IP, or ports of their own on one machine) map the listener addresses named in etcd to
theirs (`relocate`): a listener's and a certificate's `front`, a frontend's `address`.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sozu.messages import MessageError, Order, dump_orders
from sozu.state import ConfigState, StateError, describe_front, fingerprint

# category -> (the order types its values may hold, how many name segments its key has)
CATEGORIES: dict[str, tuple[tuple[str, ...], int]] = {
    "listeners": (("ADD_HTTP_LISTENER", "ADD_HTTPS_LISTENER", "ADD_TCP_LISTENER"), 1),
    "certificates": (("ADD_CERTIFICATE",), 2),
    "applications": (("ADD_APPLICATION",), 1),
    "backends": (("ADD_BACKEND",), 2),
    "health_checks": (("SET_HEALTH_CHECK",), 1),
    "frontends": (("ADD_HTTP_FRONT", "ADD_HTTPS_FRONT", "ADD_TCP_FRONT"), 2),
}
_RANK = {category: rank for rank, category in enumerate(CATEGORIES)}


class InvalidKey(ValueError):
    """A key or value that does not describe an object; the text says why."""


@dataclass
class Translation:
    """What a set of keys describes: the state, and the keys left out with their reasons."""
    state: ConfigState
    refused: dict[str, str] = field(default_factory=dict)


def normalize_prefix(prefix: str) -> str:
    """A prefix always ends with one "/" (so that /sozu never reads /sozu-old)."""
    return prefix.rstrip("/") + "/"


def _identity(category: str, order: Order) -> list[str | None]:
    """The name segments a key of this category must have for this order (None: free)."""
    data = order.data
    if category == "listeners":
        return [data["front"]]
    if category == "certificates":
        return [data["front"], None]
    if category == "applications":
        return [data["app_id"]]
    if category == "backends":
        return [data["app_id"], None]
    if category == "health_checks":
        return [data["app_id"]]
    return [data["app_id"], None]  # frontends


def parse(prefix: str, key: str, value: bytes) -> tuple[str, list[Order]]:
    """(category, the orders of one key); InvalidKey naming what is wrong."""
    if not key.startswith(prefix):
        raise InvalidKey(f"not under the prefix {prefix}")
    category, _, name = key[len(prefix):].partition("/")
    if category not in CATEGORIES:
        raise InvalidKey(f"unknown category {category!r}: expected one of {', '.join(CATEGORIES)}")
    types, segments = CATEGORIES[category]
    parts = name.split("/", segments - 1)
    if len(parts) != segments or not all(parts):
        raise InvalidKey(f"a {category} key is {prefix}{category}/"
                        + "/".join(["NAME"] * segments))
    try:
        order = Order.from_json(json.loads(value))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidKey(f"the value is not JSON: {error}") from None
    except MessageError as error:
        raise InvalidKey(f"the value is not a valid order: {error}") from None
    if order.type not in types:
        raise InvalidKey(f"a {category} value is a {' or '.join(types)} order, not {order.type}")
    for part, wanted in zip(parts, _identity(category, order)):
        if wanted is not None and part != wanted:
            raise InvalidKey(f"the key names {part!r} but the order is about {wanted!r}")
    if category == "listeners":
        proxy = order.type.split("_")[1]
        return category, [order, Order("ACTIVATE_LISTENER", {"front": order.data["front"],
                                                             "proxy": proxy, "from_scm": False})]
    return category, [order]


def relocate(order: Order, addresses: Mapping[str, str]) -> Order:
    """The order with the listener address it names mapped through `addresses`."""
    if order.type.endswith("_FRONT"):
        field = "address"
    elif order.type.endswith("_LISTENER") or order.type == "ADD_CERTIFICATE":
        field = "front"
    else:
        return order
    if order.data[field] not in addresses:
        return order
    return Order(order.type, {**order.data, field: addresses[order.data[field]]})


def translate(prefix: str, kvs: Mapping[str, bytes],
              check: Callable[[Order], None] | None = None,
              addresses: Mapping[str, str] | None = None) -> Translation:
    """The state the keys under `prefix` describe, listener addresses mapped through
    `addresses`. `check(order)` may refuse an order the state accepts (the proxy's TLS
    checks) by raising ValueError."""
    parsed, refused = [], {}
    for key, value in kvs.items():
        try:
            category, orders = parse(prefix, key, value)
        except InvalidKey as error:
            refused[key] = str(error)
            continue
        if addresses:
            orders = [relocate(order, addresses) for order in orders]
        name = key[len(prefix):].split("/", 2)[-1] if category == "frontends" else ""
        parsed.append((_RANK[category], name, key, orders))
    state = ConfigState()
    for _, _, key, orders in sorted(parsed, key=lambda p: p[:3]):
        trial = state.copy()
        try:
            for order in orders:
                if check is not None:
                    check(order)
                trial.dispatch(order)
        except (StateError, ValueError) as error:
            refused[key] = str(error)
            continue
        state = trial
    return Translation(state, refused)


def keys_of(prefix: str, state: ConfigState,
            addresses: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """The keys (and values) that describe `state`, its listener addresses mapped through
    `addresses` (the inverse of translate's): what `sozuctl etcd push` writes. Free
    names are numbered in the order of `state.to_orders()`, which keeps the orders that matter
    (an application's backends, a listener's certificates, a host's regex rules)."""
    keys: dict[str, bytes] = {}
    numbers: dict[str, int] = {}

    def put(category: str, owner: str, name: str | None, order: Order) -> None:
        key = f"{prefix}{category}/{owner}"
        if name is not None:
            counter = "frontends" if category == "frontends" else key
            numbers[counter] = numbers.get(counter, 0) + 1
            key += f"/{numbers[counter]:04d}-{name}"
        keys[key] = json.dumps(order.to_json(), sort_keys=True).encode()

    for order in state.to_orders():
        order = relocate(order, addresses) if addresses else order
        data, kind = order.data, order.type
        if kind in ("ADD_HTTP_LISTENER", "ADD_HTTPS_LISTENER", "ADD_TCP_LISTENER"):
            put("listeners", data["front"], None, order)
        elif kind == "ADD_CERTIFICATE":
            leaf = fingerprint(data["certificate"]["certificate"])
            put("certificates", data["front"], leaf[:16], order)
        elif kind == "ADD_APPLICATION":
            put("applications", data["app_id"], None, order)
        elif kind == "ADD_BACKEND":
            put("backends", data["app_id"], data["backend_id"], order)
        elif kind == "SET_HEALTH_CHECK":
            put("health_checks", data["app_id"], None, order)
        elif kind == "ADD_TCP_FRONT":
            put("frontends", data["app_id"], f"tcp-{data['address']}", order)
        elif kind in ("ADD_HTTP_FRONT", "ADD_HTTPS_FRONT"):
            what = describe_front(data).replace(" ", "")
            put("frontends", data["app_id"], f"{kind.split('_')[1].lower()}-{data['address']}-{what}",
                order)
        # ACTIVATE_LISTENER: every listener in etcd is active
    return keys


def state_file(state: ConfigState) -> bytes:
    """The state as a saved-state file, for the command socket's LOAD_STATE."""
    return dump_orders(state.to_orders())
