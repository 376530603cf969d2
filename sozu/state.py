"""ConfigState: the routing configuration as data, changed only by `dispatch(order)` (pure).

Theory of operation: the master and every worker hold a ConfigState and apply the same orders
with the same `dispatch`, so they agree by construction. Orders come out of
`Order.from_json`, already typed and normalised; dispatch only checks them against the state
(does the application exist, is the listener of the right protocol, is the front taken?).
Every handler checks first and mutates last, with mutations that cannot fail, so an order that
raises StateError leaves the state as it was.

The values held in the dicts (an application's settings, a backend, a listener's config) are
the very dicts the orders carried, and are never mutated in place: a change replaces them.
That makes `copy()` a copy of the containers only. Readers must treat them as read-only.

Health: `health_checks` (app_id -> the active check's settings) is configuration like the rest.
`health` holds the verdicts of the active checks ((app_id, backend_id, address) -> the
SET_BACKEND_HEALTH data): observations, not configuration, so they are neither compared, saved
nor diffed; a process forked from the master inherits them, and a new master checks again. A
verdict goes with its backend, and with its application's check when that is turned off.

Invariants: `backends` has no empty lists and `certificates` no empty dicts (the last removal
drops the key), so equality of two states is equality of their dicts.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from sozu.messages import COMMAND_ORDERS, Order


class StateError(ValueError):
    """An order that does not apply to the current state; the text says what is wrong."""


@dataclass(frozen=True, slots=True)
class Listener:
    protocol: str  # "http" | "https" | "tcp"
    config: dict  # the normalised ADD_*_LISTENER data
    active: bool = False


# --- certificates -----------------------------------------------------------------------------

_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*)-----END CERTIFICATE-----")
_PEM_KEY = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----"
                      r"[A-Za-z0-9+/=\s]+-----END \1PRIVATE KEY-----")


@functools.lru_cache(maxsize=256)
def fingerprint(pem: str) -> str:
    """Lower-case hex SHA-256 of the DER of the first certificate in `pem`; StateError."""
    m = _PEM_CERTIFICATE.search(pem)
    if m is None:
        raise StateError("not a PEM certificate (no valid BEGIN/END CERTIFICATE block)")
    try:
        der = base64.b64decode("".join(m.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        raise StateError("not a PEM certificate (bad base64)") from None
    if not _is_der_sequence(der):
        raise StateError("not a PEM certificate (the content is not a DER certificate)")
    return hashlib.sha256(der).hexdigest()


def _is_der_sequence(der: bytes) -> bool:
    """One DER SEQUENCE spanning exactly the whole buffer (what an X.509 certificate is)."""
    if len(der) < 2 or der[0] != 0x30:
        return False
    if der[1] < 0x80:
        return 2 + der[1] == len(der)
    size = der[1] & 0x7F
    if not 1 <= size <= 4 or len(der) < 2 + size:
        return False
    return 2 + size + int.from_bytes(der[2:2 + size], "big") == len(der)


def _certificate_entry(certificate: dict, names: list) -> tuple[str, dict]:
    """(fingerprint, stored entry) for an order's `certificate` object; StateError."""
    leaf = fingerprint(certificate["certificate"])
    for i, pem in enumerate(certificate["certificate_chain"]):
        try:
            fingerprint(pem)
        except StateError as e:
            raise StateError(f"certificate_chain[{i}]: {e}") from None
    if "ENCRYPTED" in certificate["key"]:  # PKCS#8 or the legacy Proc-Type header
        raise StateError("key: encrypted private keys are not supported")
    if _PEM_KEY.search(certificate["key"]) is None:
        raise StateError("key: not a PEM private key")
    return leaf, {"certificate": certificate["certificate"],
                  "certificate_chain": list(certificate["certificate_chain"]),
                  "key": certificate["key"], "names": list(names)}


# --- listener addresses -----------------------------------------------------------------------

def _split(address: str) -> tuple[int, str, str]:
    """(family 4|6, ip, port) of a normalised address."""
    host, port = address.rsplit(":", 1)
    return (6, host[1:-1], port) if host[0] == "[" else (4, host, port)


def _overlaps(a: str, b: str) -> bool:
    """Two different addresses that cannot both be bound: same port and family, one of them
    the wildcard (0.0.0.0 or ::)."""
    fa, ipa, pa = _split(a)
    fb, ipb, pb = _split(b)
    return pa == pb and fa == fb and (ipa in ("0.0.0.0", "::") or ipb in ("0.0.0.0", "::"))


_ADD_LISTENER = {"http": "ADD_HTTP_LISTENER", "https": "ADD_HTTPS_LISTENER",
                 "tcp": "ADD_TCP_LISTENER"}


# --- http(s) fronts ---------------------------------------------------------------------------
#
# Fronts are filed by (address, hostname), then by their rule: (kind, value, methods), so that
# an order touches one host's fronts only and the router rebuilds only the hosts that changed.
# A host's fronts keep the order they were added in: regex rules are tried in that order
# (docs/routing.md). A host's dict is never mutated in place: a change replaces it.

Host = tuple[str, str]  # (address, hostname)
Rule = tuple[str, str, tuple[str, ...]]  # (path kind, path value, methods)
Fronts = dict[Host, dict[Rule, dict]]


def front_rule(front: dict) -> Rule:
    path = front.get("path")
    kind, value = (path["kind"], path["value"]) if path else ("PREFIX", front["path_begin"])
    return kind, value, tuple(front.get("methods", ()))


def describe_front(front: dict) -> str:
    """`example.com/api` or `example.com =/login [GET]` or `example.com ~^/u/[0-9]+`."""
    kind, value, methods = front_rule(front)
    text = front["hostname"] + {"PREFIX": "", "EQUALS": " =", "REGEX": " ~"}[kind] + value
    return text + (f" [{','.join(methods)}]" if methods else "")


def _all_fronts(fronts: Fronts) -> list[dict]:
    """Every front, hosts sorted, each host's fronts in the order they were added."""
    return [front for _, group in sorted(fronts.items()) for front in group.values()]


def _regex_order(group: dict[Rule, dict]) -> list[Rule]:
    return [rule for rule in group if rule[0] == "REGEX"]


def _same_fronts(mine: Fronts, theirs: Fronts) -> bool:
    return mine == theirs and all(_regex_order(group) == _regex_order(theirs[host])
                                  for host, group in mine.items())


def _diff_group(mine: dict[Rule, dict], theirs: dict[Rule, dict]) -> tuple[list, list]:
    """(fronts to remove, fronts to add, in order) turning one host's fronts into another's.
    An added front goes after the host's others, so the regex rules kept are those that, in
    their order, make the longest start of theirs; the other regex rules are added again."""
    wanted = _regex_order(theirs)
    k, moved = 0, set()
    for rule in _regex_order(mine):
        if theirs.get(rule) != mine[rule]:
            continue  # removed or changed anyway
        if k < len(wanted) and rule == wanted[k]:
            k += 1
        else:
            moved.add(rule)
    moved.update(wanted[k:])
    removed = [f for rule, f in mine.items() if rule in moved or theirs.get(rule) != f]
    added = [f for rule, f in theirs.items() if rule in moved or mine.get(rule) != f]
    return removed, added


def _host_matches(pattern: str, hostname: str) -> bool:
    """A front hostname `pattern` serves `hostname`: equal, or `*.rest` and one more label."""
    if pattern == hostname:
        return True
    if pattern.startswith("*.") and not hostname.startswith("*."):
        label, _, rest = hostname.partition(".")
        return bool(label) and rest == pattern[2:]
    return False


def _path_matches(front: dict, path: str) -> bool:
    kind, value, _ = front_rule(front)
    if kind == "PREFIX":
        return path.startswith(value)
    return path == value if kind == "EQUALS" else re.search(value, path) is not None


def _replace_group(fronts: Fronts, host: Host, group: dict[Rule, dict]) -> None:
    if group:
        fronts[host] = group
    else:
        fronts.pop(host, None)


class ConfigState:
    """Listeners, applications, frontends, backends and certificates (see module docstring)."""

    def __init__(self) -> None:
        self.listeners: dict[str, Listener] = {}
        self.applications: dict[str, dict] = {}
        self.http_fronts: Fronts = {}
        self.https_fronts: Fronts = {}
        self.tcp_fronts: dict[str, str] = {}
        self.backends: dict[str, list[dict]] = {}
        self.certificates: dict[str, dict[str, dict]] = {}
        self.health_checks: dict[str, dict] = {}
        self.health: dict[tuple[str, str, str], dict] = {}

    @classmethod
    def from_orders(cls, orders: Iterable[Order]) -> "ConfigState":
        state = cls()
        for order in orders:
            state.dispatch(order)
        return state

    def copy(self) -> "ConfigState":
        new = ConfigState()
        new.listeners = dict(self.listeners)
        new.applications = dict(self.applications)
        new.http_fronts = dict(self.http_fronts)
        new.https_fronts = dict(self.https_fronts)
        new.tcp_fronts = dict(self.tcp_fronts)
        new.backends = {app_id: list(b) for app_id, b in self.backends.items()}
        new.certificates = {addr: dict(c) for addr, c in self.certificates.items()}
        new.health_checks = dict(self.health_checks)
        new.health = dict(self.health)
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfigState):
            return NotImplemented
        return (self.listeners == other.listeners
                and self.applications == other.applications
                and _same_fronts(self.http_fronts, other.http_fronts)
                and _same_fronts(self.https_fronts, other.https_fronts)
                and self.tcp_fronts == other.tcp_fronts
                and self.health_checks == other.health_checks
                and {k: v for k, v in self.backends.items() if v}
                == {k: v for k, v in other.backends.items() if v}
                and {k: v for k, v in self.certificates.items() if v}
                == {k: v for k, v in other.certificates.items() if v})

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"<ConfigState {len(self.listeners)} listeners, {len(self.applications)} "
                f"applications, {self.front_count()} http(s) "
                f"fronts, {len(self.tcp_fronts)} tcp fronts, "
                f"{sum(map(len, self.backends.values()))} backends, "
                f"{sum(map(len, self.certificates.values()))} certificates>")

    def front_count(self) -> int:
        return sum(map(len, self.http_fronts.values())) + sum(map(len, self.https_fronts.values()))

    # --- dispatch -----------------------------------------------------------------------------

    def dispatch(self, order: Order) -> None:
        """Apply one state order, or raise StateError and change nothing."""
        handler = _HANDLERS.get(order.type) if type(order.type) is str else None
        if handler is None:
            if type(order.type) is str and order.type in COMMAND_ORDERS:
                raise StateError(f"{order.type} is not a state order")
            raise StateError(f"unknown order type {order.type!r}: not a state order")
        try:
            handler(self, order.data)
        except StateError:
            raise
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
            # Only an Order built without from_json gets here; handlers check before mutating.
            raise StateError(f"{order.type}: malformed order data ({type(e).__name__}: {e}); "
                             "build orders with Order.from_json") from None

    def _application(self, app_id: str) -> None:
        if app_id not in self.applications:
            raise StateError(f"no application {app_id}")

    def _listener(self, address: str, protocol: str) -> Listener:
        listener = self.listeners.get(address)
        if listener is None:
            raise StateError(f"no {protocol} listener at {address}")
        if listener.protocol != protocol:
            raise StateError(f"the listener at {address} is {listener.protocol}, not {protocol}")
        return listener

    def _add_application(self, data: dict) -> None:
        self.applications[data["app_id"]] = data

    def _remove_application(self, app_id: str) -> None:
        self._application(app_id)
        for fronts in (self.http_fronts, self.https_fronts):
            for host, group in list(fronts.items()):
                if any(front["app_id"] == app_id for front in group.values()):
                    _replace_group(fronts, host, {rule: front for rule, front in group.items()
                                                  if front["app_id"] != app_id})
        tcp = [key for key, app in self.tcp_fronts.items() if app == app_id]
        for address in tcp:
            del self.tcp_fronts[address]
        self.backends.pop(app_id, None)
        self.health_checks.pop(app_id, None)
        self._forget_health(app_id)
        del self.applications[app_id]

    def _forget_health(self, app_id: str, backend: tuple[str, str] | None = None) -> None:
        """Drop the verdicts of an application's backends (or of one backend)."""
        for key in [key for key in self.health if key[0] == app_id
                    and (backend is None or key[1:] == backend)]:
            del self.health[key]

    def _add_http_front(self, data: dict, protocol: str = "http") -> None:
        """A new front, or new settings for a front of the same application (it keeps its
        place among the host's regex rules)."""
        fronts = self.https_fronts if protocol == "https" else self.http_fronts
        app_id, address = data["app_id"], data["address"]
        self._application(app_id)
        self._listener(address, protocol)
        host, rule = (address, data["hostname"]), front_rule(data)
        group = fronts.get(host, {})
        current = group.get(rule)
        if current is not None and current["app_id"] != app_id:
            raise StateError(f"{protocol} front {describe_front(data)} on {address} already "
                             f"routes to application {current['app_id']}")
        if current != data:
            _replace_group(fronts, host, {**group, rule: data})

    def _add_https_front(self, data: dict) -> None:
        self._add_http_front(data, "https")

    def _remove_http_front(self, data: dict, protocol: str = "http") -> None:
        fronts = self.https_fronts if protocol == "https" else self.http_fronts
        host, rule = (data["address"], data["hostname"]), front_rule(data)
        group = fronts.get(host, {})
        current = group.get(rule)
        if current is None:
            raise StateError(f"no {protocol} front {describe_front(data)} on {host[0]}")
        if current["app_id"] != data["app_id"]:
            raise StateError(f"the {protocol} front {describe_front(data)} on {host[0]} belongs "
                             f"to application {current['app_id']}, not {data['app_id']}")
        _replace_group(fronts, host, {r: f for r, f in group.items() if r != rule})

    def _remove_https_front(self, data: dict) -> None:
        self._remove_http_front(data, "https")

    def _add_tcp_front(self, data: dict) -> None:
        app_id, address = data["app_id"], data["address"]
        self._application(app_id)
        self._listener(address, "tcp")
        current = self.tcp_fronts.get(address)
        if current is not None and current != app_id:
            raise StateError(f"the tcp listener {address} already routes to application {current}")
        self.tcp_fronts[address] = app_id

    def _remove_tcp_front(self, data: dict) -> None:
        address = data["address"]
        current = self.tcp_fronts.get(address)
        if current is None:
            raise StateError(f"no tcp front on {address}")
        if current != data["app_id"]:
            raise StateError(f"the tcp front on {address} belongs to application {current}, "
                             f"not {data['app_id']}")
        del self.tcp_fronts[address]

    def _add_backend(self, data: dict) -> None:
        app_id = data["app_id"]
        self._application(app_id)
        backends = self.backends.get(app_id)
        if backends is None:
            self.backends[app_id] = [data]
            return
        backend_id, address = data["backend_id"], data["address"]
        for i, backend in enumerate(backends):
            if backend["backend_id"] == backend_id and backend["address"] == address:
                backends[i] = data
                return
        backends.append(data)

    def _remove_backend(self, data: dict) -> None:
        app_id, backend_id, address = data["app_id"], data["backend_id"], data["address"]
        self._application(app_id)
        backends = self.backends.get(app_id, ())
        for i, backend in enumerate(backends):
            if backend["backend_id"] == backend_id and backend["address"] == address:
                if len(backends) == 1:
                    del self.backends[app_id]
                else:
                    del backends[i]
                self._forget_health(app_id, (backend_id, address))
                return
        raise StateError(f"no backend {backend_id} at {address} in application {app_id}")

    def _set_health_check(self, data: dict) -> None:
        app_id, check = data["app_id"], data["health_check"]
        self._application(app_id)
        if check is None:
            self.health_checks.pop(app_id, None)
            self._forget_health(app_id)
        else:
            self.health_checks[app_id] = check

    def _set_backend_health(self, data: dict) -> None:
        app_id, backend_id, address = data["app_id"], data["backend_id"], data["address"]
        self._application(app_id)
        if app_id not in self.health_checks:
            raise StateError(f"application {app_id} has no health check")
        if not any(b["backend_id"] == backend_id and b["address"] == address
                   for b in self.backends.get(app_id, ())):
            raise StateError(f"no backend {backend_id} at {address} in application {app_id}")
        self.health[(app_id, backend_id, address)] = data

    def _add_certificate(self, data: dict) -> None:
        front = data["front"]
        self._listener(front, "https")
        fp, entry = _certificate_entry(data["certificate"], data["names"])
        self.certificates.setdefault(front, {})[fp] = entry

    def _known_certificate(self, front: str, fp: str) -> dict:
        self._listener(front, "https")
        certificates = self.certificates.get(front)
        if certificates is None or fp not in certificates:
            raise StateError(f"no certificate {fp} on the listener {front}")
        return certificates

    def _remove_certificate(self, data: dict) -> None:
        front, fp = data["front"], data["fingerprint"]
        certificates = self._known_certificate(front, fp)
        if len(certificates) == 1:
            del self.certificates[front]
        else:
            del certificates[fp]

    def _replace_certificate(self, data: dict) -> None:
        front, old = data["front"], data["old_fingerprint"]
        certificates = self._known_certificate(front, old)
        fp, entry = _certificate_entry(data["new_certificate"], data["new_names"])
        # The replacement takes the replaced one's place: the first one is the default.
        replaced = {(fp if key == old else key): (entry if key == old else value)
                    for key, value in certificates.items() if key != fp or key == old}
        certificates.clear()
        certificates.update(replaced)

    def _add_listener(self, data: dict, protocol: str) -> None:
        address = data["front"]
        existing = self.listeners.get(address)
        if existing is not None:
            raise StateError(f"a {existing.protocol} listener already uses {address}")
        for other in self.listeners:
            if _overlaps(address, other):
                raise StateError(f"the address {address} overlaps the listener at {other} (same "
                                 "port, and one of them listens on every address)")
        self.listeners[address] = Listener(protocol, data, False)

    def _add_http_listener(self, data: dict) -> None:
        self._add_listener(data, "http")

    def _add_https_listener(self, data: dict) -> None:
        self._add_listener(data, "https")

    def _add_tcp_listener(self, data: dict) -> None:
        self._add_listener(data, "tcp")

    def _remove_listener(self, data: dict) -> None:
        address = data["front"]
        self._listener(address, data["proxy"].lower())
        for fronts in (self.http_fronts, self.https_fronts):
            for host in [host for host in fronts if host[0] == address]:
                del fronts[host]
        self.tcp_fronts.pop(address, None)
        self.certificates.pop(address, None)
        del self.listeners[address]

    def _activate_listener(self, data: dict, active: bool = True) -> None:
        address = data["front"]
        listener = self._listener(address, data["proxy"].lower())
        if listener.active != active:
            self.listeners[address] = Listener(listener.protocol, listener.config, active)

    def _deactivate_listener(self, data: dict) -> None:
        self._activate_listener(data, False)

    # --- orders out ---------------------------------------------------------------------------

    def to_orders(self) -> list[Order]:
        """Orders that rebuild this state from an empty one, in dependency order."""
        listeners = sorted(self.listeners.items())
        orders = [Order(_ADD_LISTENER[l.protocol], l.config) for _, l in listeners]
        orders += [_activate(address, l.protocol) for address, l in listeners if l.active]
        # In the order they were added: a listener's first certificate is its default one
        # (served to clients without SNI), and a worker rebuilt from these orders must agree.
        orders += [_add_certificate(address, cert)
                   for address, certs in sorted(self.certificates.items())
                   for cert in certs.values()]
        orders += [Order("ADD_APPLICATION", app) for _, app in sorted(self.applications.items())]
        orders += [Order("ADD_BACKEND", b)
                   for _, backends in sorted(self.backends.items()) for b in backends]
        orders += [_set_health_check(app_id, check)
                   for app_id, check in sorted(self.health_checks.items())]
        orders += [Order("ADD_HTTP_FRONT", f) for f in _all_fronts(self.http_fronts)]
        orders += [Order("ADD_HTTPS_FRONT", f) for f in _all_fronts(self.https_fronts)]
        orders += [Order("ADD_TCP_FRONT", {"app_id": app, "address": address})
                   for address, app in sorted(self.tcp_fronts.items())]
        return orders

    def diff(self, other: "ConfigState") -> list[Order]:
        """Orders that turn self into other: every removal first (fronts, backends,
        certificates, then applications and listeners), then every addition in dependency
        order. A listener whose protocol or config changes is removed and added again, with
        its fronts and certificates."""
        removals: list[Order] = []
        additions: list[Order] = []
        replaced = {address for address, l in self.listeners.items()
                    if (o := other.listeners.get(address)) is None
                    or (o.protocol, o.config) != (l.protocol, l.config)}

        front_additions = []
        for protocol, mine, theirs in (("HTTP", self.http_fronts, other.http_fronts),
                                       ("HTTPS", self.https_fronts, other.https_fronts)):
            for host in sorted(mine.keys() | theirs.keys()):
                if host[0] in replaced:  # its listener is added again: so are its fronts
                    removed = list(mine.get(host, {}).values())
                    added = list(theirs.get(host, {}).values())
                else:
                    removed, added = _diff_group(mine.get(host, {}), theirs.get(host, {}))
                removals += [Order(f"REMOVE_{protocol}_FRONT", f) for f in removed]
                front_additions += [Order(f"ADD_{protocol}_FRONT", f) for f in added]
        removals += [Order("REMOVE_TCP_FRONT", {"app_id": app, "address": address})
                     for address, app in sorted(self.tcp_fronts.items())
                     if address in replaced or other.tcp_fronts.get(address) != app]

        backend_additions = []
        for app_id in sorted(self.backends.keys() | other.backends.keys()):
            removed, added = _diff_backends(self.backends.get(app_id, []),
                                            other.backends.get(app_id, []))
            removals += [Order("REMOVE_BACKEND", {"app_id": app_id, "backend_id": b["backend_id"],
                                                  "address": b["address"]}) for b in removed]
            backend_additions += [Order("ADD_BACKEND", b) for b in added]

        for address, certs in sorted(self.certificates.items()):
            theirs = other.certificates.get(address, {})
            removals += [Order("REMOVE_CERTIFICATE", {"front": address, "fingerprint": fp,
                                                      "names": list(cert["names"])})
                         for fp, cert in sorted(certs.items())
                         if address in replaced or fp not in theirs]
        removals += [Order("REMOVE_APPLICATION", app_id) for app_id in sorted(self.applications)
                     if app_id not in other.applications]
        for address, l in sorted(self.listeners.items()):
            if address in replaced:
                removals.append(Order("REMOVE_LISTENER",
                                      {"front": address, "proxy": l.protocol.upper()}))
            elif l.active and not other.listeners[address].active:
                removals.append(Order("DEACTIVATE_LISTENER", {
                    "front": address, "proxy": l.protocol.upper(), "to_scm": False}))

        fresh = {address for address in other.listeners
                 if address in replaced or address not in self.listeners}
        for address, l in sorted(other.listeners.items()):
            if address in fresh:
                additions.append(Order(_ADD_LISTENER[l.protocol], l.config))
        for address, l in sorted(other.listeners.items()):
            if l.active and (address in fresh or not self.listeners[address].active):
                additions.append(_activate(address, l.protocol))
        for address, certs in sorted(other.certificates.items()):
            mine = {} if address in fresh else self.certificates.get(address, {})
            additions += [_add_certificate(address, cert) for fp, cert in sorted(certs.items())
                          if mine.get(fp) != cert]
        additions += [Order("ADD_APPLICATION", app)
                      for app_id, app in sorted(other.applications.items())
                      if self.applications.get(app_id) != app]
        additions += backend_additions
        additions += [_set_health_check(app_id, other.health_checks.get(app_id))
                      for app_id in sorted(self.health_checks.keys() | other.health_checks.keys())
                      if app_id in other.applications
                      and self.health_checks.get(app_id) != other.health_checks.get(app_id)]
        additions += front_additions
        additions += [Order("ADD_TCP_FRONT", {"app_id": app, "address": address})
                      for address, app in sorted(other.tcp_fronts.items())
                      if address in fresh or self.tcp_fronts.get(address) != app]
        return removals + additions

    # --- queries ------------------------------------------------------------------------------

    def _fronts_by_application(self) -> dict[str, dict[str, list[dict]]]:
        grouped: dict[str, dict[str, list[dict]]] = {
            app_id: {"http_frontends": [], "https_frontends": [], "tcp_frontends": []}
            for app_id in self.applications}
        for kind, fronts in (("http_frontends", self.http_fronts),
                             ("https_frontends", self.https_fronts)):
            for front in _all_fronts(fronts):
                grouped[front["app_id"]][kind].append(dict(front))
        for address, app_id in sorted(self.tcp_fronts.items()):
            grouped[app_id]["tcp_frontends"].append({"app_id": app_id, "address": address})
        return grouped

    def _application_view(self, app_id: str, fronts: dict[str, list[dict]]) -> dict:
        view = {"app_id": app_id,
                "configuration": dict(self.applications[app_id]),
                **fronts,
                "backends": [dict(b) for b in self.backends.get(app_id, ())]}
        if app_id in self.health_checks:  # absent otherwise: the hash of an app without one stays
            view["health_check"] = dict(self.health_checks[app_id])
        return view

    def hashes(self) -> dict[str, str]:
        grouped = self._fronts_by_application()
        return {app_id: _hash(self._application_view(app_id, grouped[app_id]))
                for app_id in sorted(self.applications)}

    def query_applications(self, app_id: str | None = None, domain: str | None = None,
                           path_begin: str | None = None) -> list[dict]:
        """Applications with their settings, fronts and backends, sorted by app_id.
        `domain` keeps the applications with an http(s) front that serves this host name
        (equal, or by a `*.` wildcard); with `path_begin` too, a front whose path_begin is a
        prefix of it."""
        grouped = self._fronts_by_application()
        domain = domain.lower() if domain is not None else None
        views = []
        for app in sorted(self.applications):
            if app_id is not None and app != app_id:
                continue
            fronts = grouped[app]
            if domain is not None and not any(
                    _host_matches(f["hostname"], domain)
                    and (path_begin is None or _path_matches(f, path_begin))
                    for f in fronts["http_frontends"] + fronts["https_frontends"]):
                continue
            views.append(self._application_view(app, fronts))
        return views

    def to_json(self) -> dict:
        """A JSON-able dump for DUMP_STATE (no private keys)."""
        return {
            "listeners": [{"address": address, "protocol": l.protocol, "active": l.active,
                           "config": dict(l.config)}
                          for address, l in sorted(self.listeners.items())],
            "applications": self.query_applications(),
            "certificates": [{"address": address, "fingerprint": fp,
                              "names": list(cert["names"])}
                             for address, certs in sorted(self.certificates.items())
                             for fp, cert in sorted(certs.items())],
        }


def answer_query(state: ConfigState, query: dict) -> Any:
    """The answer to a QUERY order's data (normalised by Order.from_json), the same in the
    master and in every worker, so that an operator can compare their copies of the state:
    APPLICATIONS_HASHES -> {app_id: hash}; APPLICATIONS -> application views (all, one
    APP_ID, or those serving a DOMAIN's hostname and path_begin); CERTIFICATES ->
    {address: {fingerprint: names}}; BACKENDS -> backend_health(state). StateError for an unknown query type."""
    kind = query.get("type")
    if kind == "APPLICATIONS_HASHES":
        return state.hashes()
    if kind == "APPLICATIONS":
        selector = query.get("data") or {}
        if selector.get("type") == "APP_ID":
            return state.query_applications(app_id=selector["data"])
        if selector.get("type") == "DOMAIN":
            domain = selector["data"]
            return state.query_applications(domain=domain["hostname"],
                                            path_begin=domain.get("path_begin"))
        return state.query_applications()
    if kind == "BACKENDS":
        return backend_health(state)
    if kind == "CERTIFICATES":
        return {address: {fp: list(cert["names"]) for fp, cert in sorted(certs.items())}
                for address, certs in sorted(state.certificates.items())}
    raise StateError(f"unknown query {kind!r}")


def backend_health(state: ConfigState) -> list[dict]:
    """Every backend with the health checks' verdict: `up` is None when its application has no
    check (passive health alone, which each worker keeps for itself, then decides)."""
    rows = []
    for app_id, backends in sorted(state.backends.items()):
        checked = app_id in state.health_checks
        for b in backends:
            verdict = state.health.get((app_id, b["backend_id"], b["address"]))
            rows.append({"app_id": app_id, "backend_id": b["backend_id"], "address": b["address"],
                         "backup": b["backup"], "checked": checked,
                         "up": (verdict["up"] if verdict else True) if checked else None,
                         "since": verdict["since"] if verdict else None,
                         "reason": verdict["reason"] if verdict else None})
    return rows


def _set_health_check(app_id: str, check: dict | None) -> Order:
    return Order("SET_HEALTH_CHECK", {"app_id": app_id, "health_check": check})


def _activate(address: str, protocol: str) -> Order:
    return Order("ACTIVATE_LISTENER",
                 {"front": address, "proxy": protocol.upper(), "from_scm": False})


def _add_certificate(address: str, cert: dict) -> Order:
    return Order("ADD_CERTIFICATE", {
        "front": address,
        "certificate": {"certificate": cert["certificate"],
                        "certificate_chain": list(cert["certificate_chain"]),
                        "key": cert["key"]},
        "names": list(cert["names"])})


def _diff_backends(mine: list[dict], theirs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(to remove, to add) turning the list `mine` into `theirs`, order included: ADD_BACKEND
    replaces a known backend in place and appends a new one, so keep the longest common
    prefix (by identity), remove what follows it, and add the rest of `theirs` again."""
    def identity(b: dict) -> tuple[str, str]:
        return b["backend_id"], b["address"]

    wanted = {identity(b) for b in theirs}
    kept = [b for b in mine if identity(b) in wanted]
    removed = [b for b in mine if identity(b) not in wanted]
    k = 0
    while k < len(kept) and k < len(theirs) and identity(kept[k]) == identity(theirs[k]):
        k += 1
    changed = [new for old, new in zip(kept[:k], theirs[:k]) if old != new]
    return removed + kept[k:], changed + theirs[k:]


def _hash(view: dict) -> str:
    text = json.dumps(view, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


_HANDLERS = {
    "ADD_APPLICATION": ConfigState._add_application,
    "REMOVE_APPLICATION": ConfigState._remove_application,
    "ADD_HTTP_FRONT": ConfigState._add_http_front,
    "REMOVE_HTTP_FRONT": ConfigState._remove_http_front,
    "ADD_HTTPS_FRONT": ConfigState._add_https_front,
    "REMOVE_HTTPS_FRONT": ConfigState._remove_https_front,
    "ADD_TCP_FRONT": ConfigState._add_tcp_front,
    "REMOVE_TCP_FRONT": ConfigState._remove_tcp_front,
    "ADD_BACKEND": ConfigState._add_backend,
    "REMOVE_BACKEND": ConfigState._remove_backend,
    "SET_HEALTH_CHECK": ConfigState._set_health_check,
    "SET_BACKEND_HEALTH": ConfigState._set_backend_health,
    "ADD_CERTIFICATE": ConfigState._add_certificate,
    "REMOVE_CERTIFICATE": ConfigState._remove_certificate,
    "REPLACE_CERTIFICATE": ConfigState._replace_certificate,
    "ADD_HTTP_LISTENER": ConfigState._add_http_listener,
    "ADD_HTTPS_LISTENER": ConfigState._add_https_listener,
    "ADD_TCP_LISTENER": ConfigState._add_tcp_listener,
    "REMOVE_LISTENER": ConfigState._remove_listener,
    "ACTIVATE_LISTENER": ConfigState._activate_listener,
    "DEACTIVATE_LISTENER": ConfigState._deactivate_listener,
}
