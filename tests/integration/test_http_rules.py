"""Frontend rules through a real proxy (docs/routing.md): equals, prefix and regex paths,
methods, and their precedence; the same rules added at runtime and listed by sozuctl."""
import json

import pytest

from tests.integration.harness import Backend, Sozu, free_port, http_apps_config, request, wait_for

HOST = "rules.test"
APPS = {
    "prefix": [{"hostname": HOST, "path": "/api"}],
    "legacy": [{"hostname": HOST, "path_begin": "/api/v1"}],
    "equals": [{"hostname": HOST, "path": "/api/login", "path_type": "EQUALS"}],
    "regex_first": [{"hostname": HOST, "path": "^/u/[0-9]+$", "path_type": "REGEX"}],
    "regex_second": [{"hostname": HOST, "path": "^/u/", "path_type": "REGEX"}],
    "writes": [{"hostname": HOST, "path": "/api", "methods": ["POST", "PUT"]}],
}


@pytest.fixture(scope="module")
def ruled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rules")
    backends = {name: Backend(name) for name in APPS}
    port = free_port()
    apps = {name: {"fronts": fronts, "backends": [f"127.0.0.1:{backends[name].port}"]}
            for name, fronts in APPS.items()}
    proxy = Sozu(tmp, http_apps_config(tmp, port, apps, worker_count=2)).start()
    proxy.port, proxy.backends = port, backends
    yield proxy
    proxy.stop()
    for b in backends.values():
        b.stop()


def served_by(proxy, method: str, path: str, host: str = HOST):
    response = request(proxy.port, method, path, host=host)
    return response.header("X-Backend") if response.status == 200 else response.status


@pytest.mark.parametrize("method, path, app", [
    ("GET", "/api/login", "equals"),          # equals before any prefix
    ("GET", "/api/login?next=/", "equals"),   # the query is not part of the path
    ("GET", "/api/login/x", "prefix"),
    ("GET", "/api/v1/users", "legacy"),       # the longest prefix, path_begin still accepted
    ("GET", "/api/x", "prefix"),
    ("POST", "/api/x", "writes"),             # a method-limited front wins at the same rule
    ("PUT", "/api/x", "writes"),
    ("DELETE", "/api/x", "prefix"),
    ("GET", "/u/42", "regex_first"),          # regex rules in the order given
    ("GET", "/u/me", "regex_second"),
    ("GET", "/other", 404),
])
def test_precedence_through_the_proxy(ruled, method, path, app):
    assert served_by(ruled, method, path) == app


def test_rules_added_at_runtime_listed_and_refused_with_the_field(ruled):
    address = f"127.0.0.1:{ruled.port}"
    answer = ruled.order("ADD_HTTP_FRONT", {"app_id": "prefix", "address": address, "hostname": HOST,
                                            "path": {"kind": "REGEX", "value": "(("}})
    assert answer["status"] == "ERROR" and "data.path.value: bad regular expression" in answer["message"]
    assert served_by(ruled, "GET", "/late") == 404
    result = ruled.ctl("frontend", "http", "add", "--id=equals", f"--address={address}",
                       f"--hostname={HOST}", "--path-regex=^/late$", "--method=GET")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: served_by(ruled, "GET", "/late") == "equals", what="the new regex front served")
    assert served_by(ruled, "HEAD", "/late") == 404
    listing = ruled.ctl("frontend", "list", "--id=equals")
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if "~^/late$" in line)
    assert row.split()[:5] == ["equals", "http", address, f"{HOST}", "~^/late$"] and "GET" in row
    dump = json.loads(ruled.ctl("--json", "state", "dump").stdout)
    fronts = [f for app in dump["data"]["applications"] for f in app["http_frontends"]]
    assert {"app_id": "equals", "address": address, "hostname": HOST, "path_begin": "",
            "path": {"kind": "REGEX", "value": "^/late$"}, "methods": ["GET"]} in fronts
    assert ruled.ctl("frontend", "http", "remove", "--id=equals", f"--address={address}",
                     f"--hostname={HOST}", "--path-regex=^/late$", "--method=GET").returncode == 0
    wait_for(lambda: served_by(ruled, "GET", "/late") == 404, what="the regex front removed")
