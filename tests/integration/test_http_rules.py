"""Frontend rules through a real proxy (docs/routing.md): equals, prefix and regex paths,
methods, and their precedence; the same rules added at runtime and listed by sozuctl."""
import contextlib
import json

import pytest

from tests.integration.harness import Backend, Sozu, echo, free_port, http_apps_config, request, wait_for

HOST = "rules.test"
APPS = {
    "prefix": [{"hostname": HOST, "path": "/api"}],
    "legacy": [{"hostname": HOST, "path_begin": "/api/v1"}],
    "equals": [{"hostname": HOST, "path": "/api/login", "path_type": "EQUALS"}],
    "regex_first": [{"hostname": HOST, "path": "^/u/[0-9]+$", "path_type": "REGEX"}],
    "regex_second": [{"hostname": HOST, "path": "^/u/", "path_type": "REGEX"}],
    "writes": [{"hostname": HOST, "path": "/api", "methods": ["POST", "PUT"]}],
}


@contextlib.contextmanager
def proxy_of(tmp, fronts_by_app: dict, access=None):
    """A 2-worker proxy with one echo backend per application, given its fronts; access lines
    go to the file `access` when given."""
    backends = {name: Backend(name) for name in fronts_by_app}
    port = free_port()
    apps = {name: {"fronts": fronts, "backends": [f"127.0.0.1:{backends[name].port}"]}
            for name, fronts in fronts_by_app.items()}
    config = http_apps_config(tmp, port, apps, worker_count=2)
    if access is not None:
        config = config.replace('log_access_target = "stdout"', f'log_access_target = "file://{access}"')
    proxy = Sozu(tmp, config).start()
    proxy.port, proxy.backends, proxy.access = port, backends, access
    try:
        yield proxy
    finally:
        proxy.stop()
        for b in backends.values():
            b.stop()


@pytest.fixture(scope="module")
def ruled(tmp_path_factory):
    with proxy_of(tmp_path_factory.mktemp("rules"), APPS) as proxy:
        yield proxy


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


# --- redirects, rewrites and header edits -----------------------------------------------------

ACTIONS = {
    "moved": [{"hostname": "old.test", "redirect": {"status": 301, "host": "new.test"}},
              {"hostname": "old.test", "path": "/keep-scheme", "path_type": "EQUALS",
               "redirect": {"status": 308, "scheme": "https", "port": 8443, "path": "/elsewhere",
                            "query": ""}}],
    "rewritten": [{"hostname": "rw.test", "path": "/api", "methods": ["GET", "POST"],
                   "rewrite": {"host": "internal.svc", "strip_prefix": "/api"},
                   "request_headers": [{"action": "set", "name": "X-Env", "value": "prod"},
                                       {"action": "remove", "name": "X-Debug"}],
                   "response_headers": [{"action": "remove", "name": "Server"},
                                        {"action": "set", "name": "X-Frame-Options", "value": "DENY"}]},
                  {"hostname": "rw.test", "path": "^/u/([0-9]+)$", "path_type": "REGEX",
                   "rewrite": {"path_regex": "^/u/([0-9]+)$", "path_replacement": "/user/\\1"}}],
}


@pytest.fixture(scope="module")
def acting(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("actions")
    with proxy_of(tmp, ACTIONS, access=tmp / "access.log") as proxy:
        yield proxy


def test_redirects_are_answered_without_a_backend(acting):
    response = request(acting.port, "GET", "/some/page?x=1", host="old.test:8080")
    assert (response.status, response.header("Location")) == (301, "http://new.test/some/page?x=1")
    response = request(acting.port, "POST", "/keep-scheme?x=1", host="old.test", body=b"data")
    assert (response.status, response.header("Location")) == (308, "https://old.test:8443/elsewhere")
    assert response.header("Connection") == "close"
    assert acting.backends["moved"].requests == 0


def test_rewrites_and_request_edits_reach_the_backend(acting):
    seen = echo(request(acting.port, "GET", "/api/users?page=2", host="rw.test",
                        headers={"X-Env": "dev", "X-Debug": "1"}))
    assert seen["path"] == "/users?page=2"
    assert seen["header"]("Host") == ["internal.svc"]
    assert seen["header"]("X-Env") == ["prod"] and seen["header"]("X-Debug") == []
    assert echo(request(acting.port, "GET", "/u/42", host="rw.test"))["path"] == "/user/42"
    assert request(acting.port, "DELETE", "/api/x", host="rw.test").status == 404  # methods


def test_response_edits_reach_the_client(acting):
    response = request(acting.port, "GET", "/api/x", host="rw.test")
    assert response.status == 200 and response.header("X-Frame-Options") == "DENY"
    assert response.header("Server") is None  # the backend's, removed
    assert request(acting.port, "GET", "/u/1", host="rw.test").header("Server")  # another front
    assert response.header("X-Backend") == "rewritten" and response.header("Sozu-Id")


def test_the_access_log_shows_the_original_and_the_rewritten_target(acting):
    request(acting.port, "GET", "/api/logged?q=1", host="rw.test")

    def logged():
        text = acting.access.read_text() if acting.access.exists() else ""
        return [line for line in text.splitlines() if "/api/logged" in line]
    line = wait_for(logged, what="the access line")[0]
    assert " GET rw.test /api/logged " in line and line.endswith(" rewritten=internal.svc/logged")


def test_bad_rules_are_refused_at_runtime_naming_the_field(acting):
    address = f"127.0.0.1:{acting.port}"
    for data, field in [
        ({"redirect": {"status": 303, "host": "x.test"}}, "data.redirect.status"),
        ({"redirect": {"status": 301}}, "data.redirect"),
        ({"rewrite": {"path_regex": "(", "path_replacement": "/"}}, "data.rewrite.path_regex"),
        ({"request_headers": [{"action": "ADD", "name": "Transfer-Encoding", "value": "chunked"}]},
         "data.request_headers[0].name"),
        ({"response_headers": [{"action": "SET", "name": "Connection", "value": "close"}]},
         "data.response_headers[0].name"),
    ]:
        answer = acting.order("ADD_HTTP_FRONT", {"app_id": "moved", "address": address,
                                                 "hostname": "refused.test", **data})
        assert answer["status"] == "ERROR" and f"ADD_HTTP_FRONT: {field}: " in answer["message"], answer
    assert request(acting.port, "GET", "/", host="refused.test").status == 404


# --- custom answers -----------------------------------------------------------------------------

def test_custom_answers_per_listener_and_application(tmp_path, sozu, backend):
    (tmp_path / "404.http").write_text("HTTP/1.1 404 Not Found\nContent-Type: text/html\n\n"
                                       "<h1>%STATUS</h1> nothing here (%REQUEST_ID, %ROUTE)\n")
    (tmp_path / "408.http").write_text("HTTP/1.1 408 Request Timeout\n\ntoo slow: %MESSAGE\n")
    (tmp_path / "503.http").write_text("HTTP/1.1 503 Service Unavailable\nRetry-After: 30\n\n"
                                       "%ROUTE is down (%REQUEST_ID)\n")
    dead, live = free_port(), backend("live")
    port = free_port()
    apps = {"down": {"fronts": [("down.test", "")], "backends": [f"127.0.0.1:{dead}"],
                     "extra": 'answer_503 = "503.http"'},
            "up": {"fronts": [("up.test", "")], "backends": [f"127.0.0.1:{live.port}"]}}
    config = http_apps_config(tmp_path, port, apps, listener_extra='answer_404 = "404.http"\nanswer_408 = "408.http"',
                              timeouts="front_timeout = 10\nback_timeout = 5\nconnect_timeout = 2\nrequest_timeout = 1")
    proxy = sozu(config)
    missing = request(port, "GET", "/x", host="nowhere.test")
    assert missing.status == 404 and missing.header("Content-Type") == "text/html"
    assert missing.body.startswith(b"<h1>404</h1> nothing here (") and missing.body.endswith(b", -)\n")
    assert int(missing.header("Content-Length")) == len(missing.body)
    down = request(port, "GET", "/", host="down.test")
    assert down.status == 503 and down.header("Retry-After") == "30"
    assert down.body.startswith(b"down is down (") and b"%REQUEST_ID" not in down.body
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: up")  # and nothing more
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"too slow: The request" in answer
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    served = request(port, "GET", "/", host="up.test", conn=conn)
    after = request(port, "GET", "/", host="nowhere.test", conn=conn)  # the same connection
    assert served.status == 200 and after.status == 404
    assert served.header("Sozu-Id").encode() not in after.body  # an id of its own
    conn.close()

    # At runtime: refused when not an HTTP answer, kept in the saved state when it is one.
    refused = proxy.order("ADD_APPLICATION", {"app_id": "up", "answer_502": "<html>oops</html>\n\n"})
    assert refused["status"] == "ERROR" and "data.answer_502: not a valid HTTP answer" in refused["message"]
    page = "HTTP/1.1 502 Bad Gateway\r\n\r\nbad backend for %ROUTE\n"
    assert proxy.order("ADD_APPLICATION", {"app_id": "up", "answer_502": page})["status"] == "OK"
    saved = tmp_path / "saved.state"
    assert proxy.ctl("state", "save", f"--file={saved}").returncode == 0
    from sozu.messages import load_orders
    kept = [o.data for o in load_orders(saved.read_bytes()) if o.type == "ADD_APPLICATION"]
    assert {"app_id": "up", "answer_502": page}.items() <= next(a for a in kept if a["app_id"] == "up").items()
    listener = next(o.data for o in load_orders(saved.read_bytes()) if o.type == "ADD_HTTP_LISTENER")
    assert listener["answer_408"].startswith("HTTP/1.1 408")


# --- the same rules on an https listener ----------------------------------------------------------

def test_rules_on_an_https_listener(tmp_path, sozu, backend):
    import subprocess

    from tests.integration.certs import TestCA
    ca = TestCA(tmp_path / "pki")
    leaf = ca.issue(["r.test"])
    b = backend("tls")
    port = free_port()
    regex = ('path = "^/v([0-9])/(.*)$", path_type = "REGEX", '
             'rewrite = { path_regex = "^/v([0-9])/(.*)$", path_replacement = "/\\\\2?version=\\\\1" }, '
             'response_headers = [ { action = "set", name = "Strict-Transport-Security", value = "max-age=60" } ]')
    sozu(f"""
command_socket = "{tmp_path}/sozu.sock"
worker_count = 1
log_access_target = "off"

[[listeners]]
protocol = "https"
address = "127.0.0.1:{port}"

[applications.web]
frontends = [
  {{ address = "127.0.0.1:{port}", hostname = "r.test", certificate = "{leaf.cert_path}", key = "{leaf.key_path}", {regex} }},
  {{ address = "127.0.0.1:{port}", hostname = "r.test", path = "/old", path_type = "EQUALS", redirect = {{ status = 301, path = "/new" }} }},
]
backends = [ "127.0.0.1:{b.port}" ]
""")

    def curl(path: str) -> str:
        done = subprocess.run(["curl", "-sS", "-i", "--http1.1", "--max-time", "10", "--cacert", str(ca.path),
                               "--resolve", f"r.test:{port}:127.0.0.1", f"https://r.test:{port}{path}"],
                              capture_output=True, text=True, timeout=15)
        assert done.returncode == 0, done.stderr
        return done.stdout

    served = curl("/v2/items")
    assert "strict-transport-security: max-age=60" in served.lower()
    assert json.loads(served.split("\n\n", 1)[1])["path"] == "/items?version=2"  # text=True: LF
    moved = curl("/old")
    assert moved.startswith("HTTP/1.1 301 ") and f"Location: https://r.test:{port}/new\n" in moved
