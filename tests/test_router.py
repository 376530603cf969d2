"""sozu.router: host and path routing, checked against a brute-force reference."""

import re
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sozu.router import Router

A = "127.0.0.1:8080"
B = "127.0.0.1:8443"


def nest(fronts):
    """{(address, hostname, path_begin): app_id} -> the state's {(address, hostname): {rule: front}}."""
    nested = {}
    for (address, hostname, path_begin), app_id in (fronts or {}).items():
        nested.setdefault((address, hostname), {})[("PREFIX", path_begin, ())] = {
            "app_id": app_id, "address": address, "hostname": hostname, "path_begin": path_begin}
    return nested


def state(http=None, https=None, tcp=None):
    return SimpleNamespace(http_fronts=nest(http), https_fronts=nest(https), tcp_fronts=dict(tcp or {}))


def router(fronts, https=None, tcp=None):
    return Router.from_state(state(http=fronts, https=https, tcp=tcp))


def app(r, *args, **kwargs):
    """The app_id of the front that routes the request, or None."""
    route = r.route_http(*args, **kwargs)
    return route and route.app_id


# --- hostnames --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, expected",
    [
        ("example.com", "exact"),
        ("a.example.com", "wild"),
        ("www.example.com", "www"),  # exact beats wildcard
        ("a.b.example.com", None),  # one label only
        ("example.org", None),
        ("com", None),
        (".example.com", None),  # an empty label is no label
        ("example.com.", "exact"),  # fully qualified form
        ("a.example.com.", "wild"),
    ],
)
def test_hostname_matching(host, expected):
    r = router(
        {
            (A, "example.com", ""): "exact",
            (A, "*.example.com", ""): "wild",
            (A, "www.example.com", ""): "www",
        }
    )
    assert app(r, A, host, b"/") == expected


def test_wildcard_does_not_match_its_parent():
    r = router({(A, "*.example.com", ""): "wild"})
    assert app(r, A, "example.com", b"/") is None
    assert app(r, A, "x.example.com", b"/") == "wild"


def test_unknown_address_or_empty_router():
    r = router({(A, "example.com", ""): "app"})
    assert app(r, B, "example.com", b"/") is None
    assert app(Router(), A, "example.com", b"/") is None
    assert Router().route_tcp(A) is None


# --- paths ------------------------------------------------------------------------------


def test_longest_path_begin_wins():
    r = router(
        {
            (A, "example.com", ""): "root",
            (A, "example.com", "/api"): "api",
            (A, "example.com", "/api/v2/"): "v2",
        }
    )
    assert app(r, A, "example.com", b"/") == "root"
    assert app(r, A, "example.com", b"/api") == "api"
    assert app(r, A, "example.com", b"/api/v2") == "api"
    assert app(r, A, "example.com", b"/api/v2/users?x=1") == "v2"
    assert app(r, A, "example.com", b"/apix") == "api"  # byte prefix, as in Sozu
    assert app(r, A, "example.com", b"") == "root"


def test_no_matching_path_is_none():
    r = router({(A, "example.com", "/api"): "api"})
    assert app(r, A, "example.com", b"/") is None
    assert app(r, A, "example.com", b"/ap") is None


def test_non_ascii_path_begin_matches_its_utf8_bytes():
    r = router({(A, "example.com", "/caf\u00e9"): "cafe"})
    assert app(r, A, "example.com", "/caf\u00e9/menu".encode()) == "cafe"
    assert app(r, A, "example.com", b"/caf%C3%A9") is None  # no percent-decoding


# --- exact host without a matching path falls back to the wildcard (documented choice) --


def test_exact_host_without_matching_path_falls_back_to_wildcard():
    r = router({(A, "api.example.com", "/v2"): "v2", (A, "*.example.com", ""): "wild"})
    assert app(r, A, "api.example.com", b"/v2/x") == "v2"
    assert app(r, A, "api.example.com", b"/other") == "wild"


def test_exact_host_beats_wildcard_whatever_the_path_length():
    r = router(
        {(A, "api.example.com", "/"): "exact", (A, "*.example.com", "/v2/long/prefix"): "wild"}
    )
    assert app(r, A, "api.example.com", b"/v2/long/prefix/x") == "exact"
    assert app(r, A, "other.example.com", b"/v2/long/prefix/x") == "wild"


def test_fallback_still_needs_a_wildcard_path_match():
    r = router({(A, "api.example.com", "/v2"): "v2", (A, "*.example.com", "/static"): "wild"})
    assert app(r, A, "api.example.com", b"/other") is None
    assert app(r, A, "api.example.com", b"/static/a.css") == "wild"


# --- http / https / tcp separation ------------------------------------------------------


def test_https_uses_https_fronts():
    r = router({(A, "example.com", ""): "plain"}, https={(B, "example.com", ""): "secure"})
    assert app(r, A, "example.com", b"/") == "plain"
    assert app(r, A, "example.com", b"/", https=True) is None
    assert app(r, B, "example.com", b"/", https=True) == "secure"
    assert app(r, B, "example.com", b"/") is None


def test_route_tcp():
    r = router({}, tcp={"127.0.0.1:9000": "db"})
    assert r.route_tcp("127.0.0.1:9000") == "db"
    assert r.route_tcp("127.0.0.1:9001") is None


def test_router_is_a_snapshot():
    s = state(http={(A, "example.com", ""): "old"})
    r = Router.from_state(s)
    s.http_fronts = nest({(A, "example.com", ""): "new"})
    assert app(r, A, "example.com", b"/") == "old"
    assert app(Router.from_state(s, r), A, "example.com", b"/") == "new"


# --- property: agreement with a brute-force reference -----------------------------------

LABELS = ["a", "b", "c"]
ADDRESSES = [A, B]
PATHS = ["", "/", "/a", "/ab", "/abc", "/b", "/a/"]
APPS = ["app1", "app2", "app3", "app4"]

labels = st.lists(st.sampled_from(LABELS), min_size=1, max_size=3)
front_hostnames = st.one_of(labels.map(".".join), labels.map(lambda ls: "*." + ".".join(ls)))
request_hosts = st.builds(
    lambda ls, dot: ".".join(ls) + ("." if dot else ""),
    st.lists(st.sampled_from(LABELS + ["x"]), min_size=1, max_size=4),
    st.booleans(),
)
request_paths = st.text(alphabet="/abc", max_size=6).map(str.encode)
fronts_strategy = st.dictionaries(
    st.tuples(st.sampled_from(ADDRESSES), front_hostnames, st.sampled_from(PATHS)),
    st.sampled_from(APPS),
    max_size=25,
)


def host_matches(pattern, host):
    """Brute force, label by label: exact, or `*` standing for exactly one non-empty label."""
    pattern_labels, host_labels = pattern.split("."), host.split(".")
    if pattern_labels[0] == "*":
        return (
            len(pattern_labels) == len(host_labels)
            and host_labels[0] != ""
            and pattern_labels[1:] == host_labels[1:]
        )
    return pattern_labels == host_labels


def reference(fronts, address, host, path):
    if host.endswith("."):
        host = host[:-1]
    for wildcard_tier in (False, True):
        matches = [
            (len(path_begin), app_id)
            for (addr, hostname, path_begin), app_id in fronts.items()
            if addr == address
            and hostname.startswith("*.") == wildcard_tier
            and host_matches(hostname, host)
            and path.startswith(path_begin.encode())
        ]
        if matches:
            return max(matches)[1]
    return None


@settings(max_examples=300, deadline=None)
@given(fronts_strategy, st.sampled_from(ADDRESSES), request_hosts, request_paths, st.booleans())
def test_agrees_with_brute_force_reference(fronts, address, host, path, https):
    r = Router(https_fronts=nest(fronts)) if https else Router(http_fronts=nest(fronts))
    got = app(r, address, host, path, https=https)
    assert got == reference(fronts, address, host, path)
    if got is None:
        return
    # Stated directly: the app returned is that of a front of this listener whose hostname
    # matches and whose path_begin prefixes the path, and no matching front of the same
    # tier (exact hostnames first, then wildcards) has a longer path_begin.
    bare = host[:-1] if host.endswith(".") else host
    matching = [
        (hostname.startswith("*."), path_begin, app_id)
        for (addr, hostname, path_begin), app_id in fronts.items()
        if addr == address and host_matches(hostname, bare) and path.startswith(path_begin.encode())
    ]
    tier = [m for m in matching if not m[0]] or [m for m in matching if m[0]]
    longest = max(len(path_begin) for _, path_begin, _ in tier)
    assert [app_id for _, path_begin, app_id in tier if len(path_begin) == longest] == [got]


@settings(max_examples=100, deadline=None)
@given(fronts_strategy, request_paths)
def test_every_front_routes_its_own_hostname_and_path(fronts, suffix):
    r = Router(http_fronts=nest(fronts))
    for (address, hostname, path_begin), app_id in fronts.items():
        host = "z" + hostname[1:] if hostname.startswith("*.") else hostname
        got = app(r, address, host, path_begin.encode() + suffix)
        assert got is not None
        assert got == reference(fronts, address, host, path_begin.encode() + suffix)


def test_router_and_lb_are_pure():
    import subprocess
    import sys

    code = (
        "import sys, sozu.router, sozu.lb; "
        "print(sorted(m for m in ('gevent', 'socket', 'logging', 'selectors') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- path rules and methods -------------------------------------------------------------


def ruled(*fronts):
    """A router over fronts given as (hostname, kind, value, methods, app_id), added in order."""
    nested = {}
    for hostname, kind, value, methods, app_id in fronts:
        front = {"app_id": app_id, "address": A, "hostname": hostname, "path_begin": ""}
        if kind == "PREFIX":
            front["path_begin"] = value
        else:
            front["path"] = {"kind": kind, "value": value}
        if methods:
            front["methods"] = sorted(methods)
        nested.setdefault((A, hostname), {})[(kind, value, tuple(sorted(methods)))] = front
    return Router(http_fronts=nested)


def test_equals_beats_the_longest_prefix_and_prefix_beats_regex():
    r = ruled(("a.com", "REGEX", "^/login", (), "regex"), ("a.com", "PREFIX", "/log", (), "prefix"),
              ("a.com", "EQUALS", "/login", (), "equals"))
    assert app(r, A, "a.com", b"/login") == "equals"
    assert app(r, A, "a.com", b"/login/x") == "prefix"
    assert app(r, A, "a.com", b"/lo") is None
    r = ruled(("a.com", "REGEX", "^/log", (), "regex"), ("a.com", "PREFIX", "/x", (), "prefix"))
    assert app(r, A, "a.com", b"/login") == "regex"


def test_regex_rules_are_tried_in_the_order_given():
    r = ruled(("a.com", "REGEX", "[0-9]$", (), "digit"), ("a.com", "REGEX", "^/u", (), "user"))
    assert app(r, A, "a.com", b"/u/1") == "digit"
    assert app(r, A, "a.com", b"/u/x") == "user"
    r = ruled(("a.com", "REGEX", "^/u", (), "user"), ("a.com", "REGEX", "[0-9]$", (), "digit"))
    assert app(r, A, "a.com", b"/u/1") == "user"


def test_equals_compares_the_whole_path_without_its_query():
    r = ruled(("a.com", "EQUALS", "/", (), "home"))
    assert app(r, A, "a.com", b"/") == "home"
    assert app(r, A, "a.com", b"/x") is None


def test_methods_filter_and_the_method_limited_front_wins_at_the_same_rule():
    r = ruled(("a.com", "PREFIX", "/api", (), "any"), ("a.com", "PREFIX", "/api", ("POST", "PUT"), "write"),
              ("a.com", "EQUALS", "/form", ("POST",), "form"))
    assert app(r, A, "a.com", b"/api/x", method=b"POST") == "write"
    assert app(r, A, "a.com", b"/api/x", method=b"GET") == "any"
    assert app(r, A, "a.com", b"/form", method=b"POST") == "form"
    assert app(r, A, "a.com", b"/form", method=b"GET") is None


def test_a_wildcard_serves_what_the_exact_hosts_methods_exclude():
    r = ruled(("a.b.com", "PREFIX", "", ("GET",), "exact"), ("*.b.com", "PREFIX", "", (), "wild"))
    assert app(r, A, "a.b.com", b"/", method=b"GET") == "exact"
    assert app(r, A, "a.b.com", b"/", method=b"DELETE") == "wild"


def test_a_host_unchanged_keeps_its_compiled_routes():
    first = ruled(("a.com", "REGEX", "^/a", (), "one"), ("b.com", "PREFIX", "", (), "two"))
    fronts = dict(first._compiled[0])
    nested = {host: group for host, (group, _) in fronts.items()}
    nested[(A, "b.com")] = {("PREFIX", "/x", ()): {"app_id": "three", "address": A, "hostname": "b.com",
                                                   "path_begin": "/x"}}
    second = Router(http_fronts=nested, previous=first)
    assert second._compiled[0][(A, "a.com")][1] is first._compiled[0][(A, "a.com")][1]
    assert app(second, A, "b.com", b"/x") == "three" and app(second, A, "a.com", b"/a") == "one"


# Property: agreement with a brute-force reference over every kind of rule. The reference
# reads docs/routing.md literally: tiers (exact host, then the wildcard), and within a tier
# equals, then the longest prefix, then regex rules in the order given; at one rule, fronts
# limited to methods first; a front whose methods exclude the request is absent.

KINDS_AND_VALUES = [("PREFIX", p) for p in PATHS] + [("EQUALS", p) for p in ("/", "/a", "/ab")] + [
    ("REGEX", p) for p in ("^/a", "b$", "a.c", "^/$", "c")]
METHOD_SETS = [(), ("GET",), ("POST",), ("GET", "POST")]
rule_fronts = st.lists(
    st.tuples(front_hostnames, st.sampled_from(KINDS_AND_VALUES), st.sampled_from(METHOD_SETS),
              st.sampled_from(APPS)),
    max_size=25,
)


def rule_reference(fronts, host, method, path):
    """fronts: [(hostname, kind, value, methods, app_id)] in the order added, later duplicates
    of a rule replacing earlier ones in place (as the state does)."""
    table = {}
    for hostname, kind, value, methods, app_id in fronts:
        table[(hostname, kind, value, tuple(sorted(methods)))] = app_id
    if host.endswith("."):
        host = host[:-1]
    for wildcard_tier in (False, True):
        matching = [(kind, value, methods, app_id) for (hostname, kind, value, methods), app_id in table.items()
                    if hostname.startswith("*.") == wildcard_tier and host_matches(hostname, host)
                    and (not methods or method in methods)]
        equals = [m for m in matching if m[0] == "EQUALS" and path == m[1].encode()]
        if equals:
            return sorted(equals, key=lambda m: not m[2])[0][3]
        prefixes = [m for m in matching if m[0] == "PREFIX" and path.startswith(m[1].encode())]
        if prefixes:
            return sorted(prefixes, key=lambda m: (-len(m[1]), not m[2]))[0][3]
        for kind, value, _, app_id in matching:
            if kind == "REGEX" and re.search(value.encode(), path):
                return app_id
    return None


@settings(max_examples=400, deadline=None)
@given(rule_fronts, request_hosts, st.sampled_from(["GET", "POST", "PUT"]), request_paths)
def test_rules_agree_with_brute_force_reference(fronts, host, method, path):
    r = ruled(*[(hostname, kind, value, methods, app_id)
                for hostname, (kind, value), methods, app_id in fronts])
    flat = [(hostname, kind, value, methods, app_id) for hostname, (kind, value), methods, app_id in fronts]
    assert app(r, A, host, path, method=method.encode()) == rule_reference(flat, host, method, path)
