"""Routing: which frontend serves a request.

Theory of operation
-------------------
A `Router` is an immutable lookup table. Each worker builds a new one with
`Router.from_state(state, previous)` whenever its state changes and swaps it in; requests
already routed are unaffected. It is consulted once per request, so the work is done up front:

    {listener address: ({exact hostname: HostRoutes}, {wildcard parent: HostRoutes})}

where a wildcard front `*.example.com` is filed under its parent `example.com`. A lookup is one
dict get for the listener, one for the exact hostname, at most one more for the wildcard, and
the rules of that one host: routing costs O(rules of the host), never O(all frontends).

The state files fronts by (address, hostname) and replaces a host's dict whenever one of its
fronts changes, so a host's compiled `HostRoutes` (regular expressions included) are reused
from the previous router while that dict is the same object: one order recompiles one host.

Matching rules (docs/routing.md):

1. The hostname is matched exactly, else by the wildcard one label up: `*.example.com`
   matches `a.example.com`, but neither `a.b.example.com` nor `example.com`.
2. Within a hostname: a front whose path EQUALS the request path, then the longest PREFIX
   (`path_begin`) of it, then the REGEX rules in the order they were added (`re.search`).
   Paths are the raw request path without its query, as bytes (no percent-decoding); a
   prefix is not segment-aware (`/api` matches `/apix`), as in Sozu. At the same path rule,
   a front limited to some methods comes before one without; a front whose methods do not
   include the request's is skipped, as if absent.
3. Fallback: when the exact hostname has fronts but none of them matches, the wildcard's
   fronts are tried next, so adding a front only ever captures requests that match it. An
   exact host still beats the wildcard whatever its rules: `api.example.com` + `/` wins over
   `*.example.com` + `/v2/long/prefix`.

No match gives None (the caller answers 404). Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

_PATH_KINDS = ("EQUALS", "PREFIX", "REGEX")


class Route:
    """One frontend, compiled: what the request matched and what to do with it."""

    __slots__ = ("app_id", "front", "methods", "kind", "value", "regex", "redirect", "rewrite",
                 "rewrite_regex", "request_headers", "response_headers")

    def __init__(self, front: dict):
        self.front = front  # the order data, as the state holds it
        self.app_id: str = front["app_id"]
        path = front.get("path")
        self.kind, value = (path["kind"], path["value"]) if path else ("PREFIX", front["path_begin"])
        self.value = value.encode("utf-8")
        self.regex = re.compile(self.value) if self.kind == "REGEX" else None
        methods = front.get("methods")
        self.methods = frozenset(m.encode("ascii") for m in methods) if methods else None
        self.redirect: dict | None = front.get("redirect")
        self.rewrite: dict | None = front.get("rewrite")
        pattern = self.rewrite and self.rewrite["path_regex"]
        self.rewrite_regex = re.compile(pattern.encode("utf-8")) if pattern else None
        self.request_headers = _edits(front.get("request_headers"))
        self.response_headers = _edits(front.get("response_headers"))

    def __repr__(self) -> str:
        return f"<Route {self.kind} {self.value!r} -> {self.app_id}>"


def _edits(edits: list | None) -> tuple[tuple[str, bytes, bytes, bytes], ...]:
    """(action, name, lower-case name, value) per header edit."""
    return tuple((e["action"], e["name"].encode("ascii"), e["name"].lower().encode("ascii"),
                  e["value"].encode("ascii")) for e in edits or ())


class HostRoutes:
    """The fronts of one hostname on one listener, in matching order."""

    __slots__ = ("equals", "prefixes", "regexes")

    def __init__(self, fronts):
        equals: dict[bytes, list[Route]] = {}
        prefixes: list[Route] = []
        regexes: list[Route] = []
        for front in fronts:  # in the order they were added
            route = Route(front)
            if route.kind == "EQUALS":
                equals.setdefault(route.value, []).append(route)
            elif route.kind == "PREFIX":
                prefixes.append(route)
            else:
                regexes.append(route)
        # Longest prefix first; at one path rule, method-limited fronts first (sorted() is
        # stable, so regex rules and same-rank fronts keep the order they were added in).
        self.equals = {path: tuple(sorted(routes, key=_any_method_last))
                       for path, routes in equals.items()}
        self.prefixes = tuple(sorted(prefixes, key=lambda r: (-len(r.value), r.methods is None)))
        self.regexes = tuple(regexes)

    def match(self, method: bytes, path: bytes) -> Route | None:
        if self.equals:
            for route in self.equals.get(path, ()):
                if route.methods is None or method in route.methods:
                    return route
        for route in self.prefixes:
            if path.startswith(route.value) and (route.methods is None or method in route.methods):
                return route
        for route in self.regexes:
            if (route.methods is None or method in route.methods) and route.regex.search(path):
                return route
        return None


def _any_method_last(route: Route) -> bool:
    return route.methods is None


# Per listener address: (exact hostname -> routes, wildcard parent domain -> routes).
HostTable = tuple[dict[str, HostRoutes], dict[str, HostRoutes]]
# Compiled hosts, for reuse: (address, hostname) -> (the state's dict of the host's fronts, routes).
Compiled = dict[tuple[str, str], tuple[Mapping, HostRoutes]]


class Router:
    """Host, path and method routing for HTTP(S) listeners, address routing for TCP listeners."""

    __slots__ = ("_http", "_https", "_tcp", "_compiled")

    def __init__(self, http_fronts: Mapping | None = None, https_fronts: Mapping | None = None,
                 tcp_fronts: Mapping[str, str] | None = None, previous: Router | None = None):
        """Fronts in the state's shape: `{(address, hostname): {rule: front}}` for HTTP and
        HTTPS, `{address: app_id}` for TCP. Hosts whose dict is the one `previous` was built
        from are not compiled again."""
        old = previous._compiled if previous is not None else ({}, {})
        self._compiled: tuple[Compiled, Compiled] = ({}, {})
        self._http = _build(http_fronts or {}, old[0], self._compiled[0])
        self._https = _build(https_fronts or {}, old[1], self._compiled[1])
        self._tcp: dict[str, str] = dict(tcp_fronts or {})

    @classmethod
    def from_state(cls, state: Any, previous: Router | None = None) -> Router:
        return cls(state.http_fronts, state.https_fronts, state.tcp_fronts, previous)

    def route_http(self, address: str, host: str, path: bytes, https: bool = False,
                   method: bytes = b"GET") -> Route | None:
        """The front serving `method host path` on the listener at `address`, or None.

        `host` is expected lower-cased without its port (the parser does that); a trailing
        dot (the fully qualified form `example.com.`) is ignored. `path` has no query."""
        table = (self._https if https else self._http).get(address)
        if table is None:
            return None
        exact, wildcard = table
        if host[-1:] == ".":
            host = host[:-1]
        routes = exact.get(host)
        if routes is not None:
            route = routes.match(method, path)
            if route is not None:
                return route
        dot = host.find(".")
        # dot == 0: an empty first label is no label, so no wildcard can match it.
        if dot > 0 and wildcard:
            routes = wildcard.get(host[dot + 1:])
            if routes is not None:
                return routes.match(method, path)
        return None

    def route_tcp(self, address: str) -> str | None:
        return self._tcp.get(address)


def _build(fronts: Mapping, previous: Compiled, compiled: Compiled) -> dict[str, HostTable]:
    tables: dict[str, HostTable] = {}
    for host, group in fronts.items():
        known = previous.get(host)
        routes = known[1] if known is not None and known[0] is group else HostRoutes(group.values())
        compiled[host] = (group, routes)
        address, hostname = host
        exact, wildcard = tables.setdefault(address, ({}, {}))
        if hostname.startswith("*."):
            wildcard[hostname[2:]] = routes
        else:
            exact[hostname] = routes
    return tables
