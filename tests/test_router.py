"""sozu.router: host and path routing, checked against a brute-force reference."""

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sozu.router import Router

A = "127.0.0.1:8080"
B = "127.0.0.1:8443"


def state(http=None, https=None, tcp=None):
    return SimpleNamespace(
        listeners={},
        applications={},
        http_fronts=dict(http or {}),
        https_fronts=dict(https or {}),
        tcp_fronts=dict(tcp or {}),
        backends={},
    )


def router(fronts, https=None, tcp=None):
    return Router.from_state(state(http=fronts, https=https, tcp=tcp))


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
    assert r.route_http(A, host, b"/") == expected


def test_wildcard_does_not_match_its_parent():
    r = router({(A, "*.example.com", ""): "wild"})
    assert r.route_http(A, "example.com", b"/") is None
    assert r.route_http(A, "x.example.com", b"/") == "wild"


def test_unknown_address_or_empty_router():
    r = router({(A, "example.com", ""): "app"})
    assert r.route_http(B, "example.com", b"/") is None
    assert Router().route_http(A, "example.com", b"/") is None
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
    assert r.route_http(A, "example.com", b"/") == "root"
    assert r.route_http(A, "example.com", b"/api") == "api"
    assert r.route_http(A, "example.com", b"/api/v2") == "api"
    assert r.route_http(A, "example.com", b"/api/v2/users?x=1") == "v2"
    assert r.route_http(A, "example.com", b"/apix") == "api"  # byte prefix, as in Sozu
    assert r.route_http(A, "example.com", b"") == "root"


def test_no_matching_path_is_none():
    r = router({(A, "example.com", "/api"): "api"})
    assert r.route_http(A, "example.com", b"/") is None
    assert r.route_http(A, "example.com", b"/ap") is None


def test_non_ascii_path_begin_matches_its_utf8_bytes():
    r = router({(A, "example.com", "/caf\u00e9"): "cafe"})
    assert r.route_http(A, "example.com", "/caf\u00e9/menu".encode()) == "cafe"
    assert r.route_http(A, "example.com", b"/caf%C3%A9") is None  # no percent-decoding


# --- exact host without a matching path falls back to the wildcard (documented choice) --


def test_exact_host_without_matching_path_falls_back_to_wildcard():
    r = router({(A, "api.example.com", "/v2"): "v2", (A, "*.example.com", ""): "wild"})
    assert r.route_http(A, "api.example.com", b"/v2/x") == "v2"
    assert r.route_http(A, "api.example.com", b"/other") == "wild"


def test_exact_host_beats_wildcard_whatever_the_path_length():
    r = router(
        {(A, "api.example.com", "/"): "exact", (A, "*.example.com", "/v2/long/prefix"): "wild"}
    )
    assert r.route_http(A, "api.example.com", b"/v2/long/prefix/x") == "exact"
    assert r.route_http(A, "other.example.com", b"/v2/long/prefix/x") == "wild"


def test_fallback_still_needs_a_wildcard_path_match():
    r = router({(A, "api.example.com", "/v2"): "v2", (A, "*.example.com", "/static"): "wild"})
    assert r.route_http(A, "api.example.com", b"/other") is None
    assert r.route_http(A, "api.example.com", b"/static/a.css") == "wild"


# --- http / https / tcp separation ------------------------------------------------------


def test_https_uses_https_fronts():
    r = router({(A, "example.com", ""): "plain"}, https={(B, "example.com", ""): "secure"})
    assert r.route_http(A, "example.com", b"/") == "plain"
    assert r.route_http(A, "example.com", b"/", https=True) is None
    assert r.route_http(B, "example.com", b"/", https=True) == "secure"
    assert r.route_http(B, "example.com", b"/") is None


def test_route_tcp():
    r = router({}, tcp={"127.0.0.1:9000": "db"})
    assert r.route_tcp("127.0.0.1:9000") == "db"
    assert r.route_tcp("127.0.0.1:9001") is None


def test_router_is_a_snapshot():
    s = state(http={(A, "example.com", ""): "old"})
    r = Router.from_state(s)
    s.http_fronts[(A, "example.com", "")] = "new"
    assert r.route_http(A, "example.com", b"/") == "old"
    assert Router.from_state(s).route_http(A, "example.com", b"/") == "new"


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
    r = Router(https_fronts=fronts) if https else Router(http_fronts=fronts)
    got = r.route_http(address, host, path, https=https)
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
    r = Router(http_fronts=fronts)
    for (address, hostname, path_begin), app_id in fronts.items():
        host = "z" + hostname[1:] if hostname.startswith("*.") else hostname
        got = r.route_http(address, host, path_begin.encode() + suffix)
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
