"""Routing: which application serves a request.

Theory of operation
-------------------
A `Router` is an immutable lookup table. Each worker builds a new one with
`Router.from_state(state)` whenever its state changes and swaps it in; requests already
routed are unaffected. It is consulted once per request, so the work is done up front:

    {listener address: ({exact hostname: routes}, {wildcard parent: routes})}

where `routes` is a tuple of `(path_begin bytes, app_id)` sorted longest `path_begin` first
and a wildcard front `*.example.com` is filed under its parent `example.com`. A lookup is
one dict get for the listener, one for the exact hostname, at most one more for the wildcard,
and a scan of a handful of prefixes.

Matching rules (DESIGN.md §6):

1. The hostname is matched exactly, else by the wildcard one label up: `*.example.com`
   matches `a.example.com`, but neither `a.b.example.com` nor `example.com`.
2. Within a hostname, the longest `path_begin` that is a byte prefix of the request path
   wins; `""` matches every path. The prefix is not segment-aware (`/api` matches
   `/apix`), as in Sozu; end a prefix with `/` to route a directory only. `path_begin` is
   compared with the raw request path as its UTF-8 bytes (no percent-decoding).
3. Fallback: when the exact hostname has fronts but none of their paths matches, the
   wildcard's fronts are tried next. Nginx and Sozu 0.11 stop at the exact host (a 404);
   we do not, because fronts are independent rules here, and adding a front for
   `api.example.com/v2` must not take `api.example.com/other` away from a `*.example.com`
   front that served it. Adding a front therefore only ever captures requests that match
   it. An exact host still beats the wildcard whatever the path lengths:
   `api.example.com` + `/` wins over `*.example.com` + `/v2/long/prefix`.

No match gives None (the caller answers 404). Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

from typing import Any, Mapping

# (path_begin, app_id) pairs, longest path_begin first.
Routes = tuple[tuple[bytes, str], ...]
# Per listener address: (exact hostname -> routes, wildcard parent domain -> routes).
HostTable = tuple[dict[str, Routes], dict[str, Routes]]


class Router:
    """Host and path routing for HTTP(S) listeners, address routing for TCP listeners."""

    __slots__ = ("_http", "_https", "_tcp")

    def __init__(
        self,
        http_fronts: Mapping[tuple[str, str, str], str] | None = None,
        https_fronts: Mapping[tuple[str, str, str], str] | None = None,
        tcp_fronts: Mapping[str, str] | None = None,
    ) -> None:
        """Fronts in the state's shape: `{(address, hostname, path_begin): app_id}` for
        HTTP and HTTPS, `{address: app_id}` for TCP."""
        self._http = _build(http_fronts or {})
        self._https = _build(https_fronts or {})
        self._tcp: dict[str, str] = dict(tcp_fronts or {})

    @classmethod
    def from_state(cls, state: Any) -> Router:
        return cls(state.http_fronts, state.https_fronts, state.tcp_fronts)

    def route_http(self, address: str, host: str, path: bytes, https: bool = False) -> str | None:
        """The app_id serving `host` + `path` on the listener at `address`, or None.

        `host` is expected lower-cased without its port (the parser does that); a trailing
        dot (the fully qualified form `example.com.`) is ignored."""
        table = (self._https if https else self._http).get(address)
        if table is None:
            return None
        exact, wildcard = table
        if host[-1:] == ".":
            host = host[:-1]
        routes = exact.get(host)
        if routes is not None:
            for prefix, app_id in routes:
                if path.startswith(prefix):
                    return app_id
        dot = host.find(".")
        # dot == 0: an empty first label is no label, so no wildcard can match it.
        if dot > 0 and wildcard:
            routes = wildcard.get(host[dot + 1 :])
            if routes is not None:
                for prefix, app_id in routes:
                    if path.startswith(prefix):
                        return app_id
        return None

    def route_tcp(self, address: str) -> str | None:
        return self._tcp.get(address)


def _build(fronts: Mapping[tuple[str, str, str], str]) -> dict[str, HostTable]:
    grouped: dict[str, tuple[dict[str, list], dict[str, list]]] = {}
    for (address, hostname, path_begin), app_id in fronts.items():
        exact, wildcard = grouped.setdefault(address, ({}, {}))
        hostname = hostname.lower()
        if hostname.endswith("."):
            hostname = hostname[:-1]
        if hostname.startswith("*."):
            bucket = wildcard.setdefault(hostname[2:], [])
        else:
            bucket = exact.setdefault(hostname, [])
        bucket.append(((path_begin or "").encode("utf-8"), app_id))
    return {
        address: (_sorted(exact), _sorted(wildcard))
        for address, (exact, wildcard) in grouped.items()
    }


def _sorted(hosts: dict[str, list[tuple[bytes, str]]]) -> dict[str, Routes]:
    # Ties cannot happen within one hostname (a front's key is unique) except through the
    # normalisation above; sorting on the prefix too keeps the table deterministic anyway.
    return {host: tuple(sorted(routes, key=_longest_first)) for host, routes in hosts.items()}


def _longest_first(route: tuple[bytes, str]) -> tuple[int, bytes, str]:
    return (-len(route[0]), route[0], route[1])
