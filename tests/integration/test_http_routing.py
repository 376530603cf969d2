"""Routing through a real proxy: exact and `*.domain` hosts, longest path_begin, 404 (with the
listener's answer_404), https_redirect, absolute-form targets."""
import pytest

from tests.integration.harness import (Backend, Sozu, echo, free_port, http_apps_config, raw_request, request)

APPS = {
    "root": [("example.com", "")],
    "api": [("example.com", "/api")],
    "api_v2": [("example.com", "/api/v2")],
    "wild": [("*.example.com", "")],
    "exact_sub": [("www.example.com", "/")],
    "other": [("other.test", "/static/")],
}


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("routing")
    (tmp / "404.http").write_text("HTTP/1.1 404 Not Found\nContent-Type: text/plain\nContent-Length: 18\n"
                                  "Connection: close\n\nno route, custom.\n")
    backends = {name: Backend(name) for name in [*APPS, "secure"]}
    port = free_port()
    apps = {name: {"fronts": fronts, "backends": [f"127.0.0.1:{backends[name].port}"]}
            for name, fronts in APPS.items()}
    apps["secure"] = {"fronts": [("secure.test", "")], "backends": [f"127.0.0.1:{backends['secure'].port}"],
                      "extra": "https_redirect = true"}
    proxy = Sozu(tmp, http_apps_config(tmp, port, apps, listener_extra='answer_404 = "404.http"')).start()
    proxy.port = port
    yield proxy
    proxy.stop()
    for b in backends.values():
        b.stop()


def served_by(proxy, host: str, path: str = "/") -> str | int:
    response = request(proxy.port, "GET", path, host=host)
    if response.status != 200:
        return response.status
    return response.header("X-Backend")


@pytest.mark.parametrize("host,path,app", [
    ("example.com", "/", "root"),
    ("EXAMPLE.com", "/", "root"),             # case-insensitive
    ("example.com:8080", "/", "root"),        # port stripped
    ("example.com.", "/", "root"),            # fully qualified form
    ("example.com", "/ap", "root"),
    ("example.com", "/api", "api"),
    ("example.com", "/apix", "api"),          # a byte prefix, as in Sozu
    ("example.com", "/api/v1/users", "api"),
    ("example.com", "/api/v2", "api_v2"),     # the longest prefix wins
    ("example.com", "/api/v2/users?x=1", "api_v2"),
    ("a.example.com", "/", "wild"),           # one label under the wildcard
    ("A.Example.COM", "/api", "wild"),
    ("www.example.com", "/x", "exact_sub"),   # an exact host beats the wildcard
    ("www.example.com", "", "exact_sub"),
    ("other.test", "/static/app.js", "other"),
])
def test_routes(routed, host, path, app):
    assert served_by(routed, host, path or "/") == app


@pytest.mark.parametrize("host,path", [
    ("a.b.example.com", "/"),      # the wildcard covers one label only
    ("example.org", "/"),
    ("other.test", "/static"),     # shorter than the only prefix
    ("other.test", "/"),
    ("localhost", "/"),
])
def test_no_route_is_the_listeners_404(routed, host, path):
    response = request(routed.port, "GET", path, host=host)
    assert response.status == 404
    assert response.body == b"no route, custom.\n"
    assert response.header("Connection") == "close"


def test_absolute_form_is_routed_by_its_authority_and_sent_in_origin_form(routed):
    answer = raw_request(routed.port, b"GET http://example.com/api/v2/x?q=1 HTTP/1.1\r\nHost: example.com\r\n"
                                      b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    body = answer.split(b"\r\n\r\n", 1)[1]
    import json
    seen = json.loads(body)
    assert seen["backend"] == "api_v2"
    assert seen["path"] == "/api/v2/x?q=1"


def test_query_and_path_are_forwarded_unchanged(routed):
    seen = echo(request(routed.port, "GET", "/api/%2e%2e/a%20b?x=%41&y", host="example.com"))
    assert seen["path"] == "/api/%2e%2e/a%20b?x=%41&y"


def test_https_redirect_answers_301_to_https(routed):
    response = request(routed.port, "GET", "/some/page?x=1", host="secure.test:80")
    assert response.status == 301
    assert response.header("Location") == "https://secure.test/some/page?x=1"
    assert response.header("Connection") == "close"
