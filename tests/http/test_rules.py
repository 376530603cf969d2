"""sozu.http.rules: redirects, rewrites and header edits of a matched front, on parsed heads."""
import pytest

from sozu.http import rules
from sozu.http.headers import request_head
from sozu.http.parser import parse_request_head, parse_response_head
from sozu.messages import Order
from sozu.router import Route


def route(**fields) -> Route:
    data = {"app_id": "app", "address": "127.0.0.1:8080", "hostname": "a.com", **fields}
    return Route(Order.from_json({"type": "ADD_HTTP_FRONT", "data": data}).data)


def head(target: bytes = b"/", host: bytes = b"a.com", extra: bytes = b"", method: bytes = b"GET"):
    parsed, _ = parse_request_head(method + b" " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"\r\n")
    return parsed


def location(answer: bytes) -> str:
    status_line, rest = answer.split(b"\r\n", 1)
    fields = dict(line.split(b": ", 1) for line in rest.split(b"\r\n\r\n")[0].split(b"\r\n"))
    return status_line.decode(), fields[b"Location"].decode()


# --- redirects --------------------------------------------------------------------------------

@pytest.mark.parametrize("redirect, https, target, host, expected", [
    ({"scheme": "https"}, False, b"/p?q=1", b"a.com:8080", ("HTTP/1.1 302 Found", "https://a.com/p?q=1")),
    ({"status": 301, "host": "b.com"}, False, b"/p", b"a.com", ("HTTP/1.1 301 Moved Permanently", "http://b.com/p")),
    ({"status": 308, "path": "/new"}, True, b"/old?x", b"a.com:8443",
     ("HTTP/1.1 308 Permanent Redirect", "https://a.com:8443/new?x")),   # same origin keeps its port
    ({"status": 307, "query": ""}, False, b"/p?drop=1", b"a.com", ("HTTP/1.1 307 Temporary Redirect", "http://a.com/p")),
    ({"query": "a=b"}, False, b"/p?c=d", b"a.com", ("HTTP/1.1 302 Found", "http://a.com/p?a=b")),
    ({"scheme": "https", "port": 8443}, False, b"/", b"a.com:8080", ("HTTP/1.1 302 Found", "https://a.com:8443/")),
    ({"host": "b.com:81", "port": 82}, False, b"/", b"a.com", ("HTTP/1.1 302 Found", "http://b.com:82/")),
    ({"host": "[::1]"}, False, b"/", b"a.com", ("HTTP/1.1 302 Found", "http://[::1]/")),
    ({"scheme": "https"}, False, b"http://a.com:8080/abs?q", b"a.com:8080", ("HTTP/1.1 302 Found", "https://a.com/abs?q")),
])
def test_redirect_location(redirect, https, target, host, expected):
    answer = rules.redirect(route(redirect=redirect), head(target, host), https)
    assert location(answer) == expected
    assert b"\r\nConnection: close\r\n" in answer
    head_part, body = answer.split(b"\r\n\r\n", 1)
    assert b"Content-Length: %d" % len(body) in head_part


def test_redirect_uses_the_rewritten_path_and_host():
    r = route(path={"kind": "REGEX", "value": "^/old/"}, redirect={"status": 301, "scheme": "https"},
              rewrite={"host": "www.a.com", "path_regex": "^/old/(.*)$", "path_replacement": r"/new/\1"})
    assert location(rules.redirect(r, head(b"/old/x/y?z"), False))[1] == "https://www.a.com/new/x/y?z"


# --- rewrites ---------------------------------------------------------------------------------

def test_nothing_to_rewrite_is_the_same_head():
    h = head()
    assert rules.forwarded(route(), h) is h


@pytest.mark.parametrize("rewrite, target, expected", [
    ({"strip_prefix": "/api"}, b"/api/users?x=1", b"/users?x=1"),
    ({"strip_prefix": "/api"}, b"/api", b"/"),
    ({"strip_prefix": "/api/"}, b"/apix", b"/apix"),           # not a prefix: unchanged
    ({"path_regex": "^/u/([0-9]+)$", "path_replacement": r"/user?id=\1"}, b"/u/42", b"/user?id=42"),
    ({"path_regex": "^/(?P<a>[a-z]+)/(?P<b>[a-z]+)", "path_replacement": r"/\g<b>/\g<a>"}, b"/x/y/z?q", b"/y/x/z?q"),
    ({"strip_prefix": "/v1", "path_regex": "^/", "path_replacement": "/v2/"}, b"/v1/a", b"/v2/a"),
    ({"path_regex": "^/a", "path_replacement": "b"}, b"/a/c", b"/b/c"),  # always from "/"
])
def test_path_rewrites(rewrite, target, expected):
    forwarded = rules.forwarded(route(rewrite=rewrite), head(target))
    assert forwarded.target == expected
    assert forwarded.path == expected.partition(b"?")[0]


def test_host_rewrite_reaches_the_backend_head():
    h = head(b"/p", b"a.com:8080", b"X-Other: 1\r\n")
    forwarded = rules.forwarded(route(rewrite={"host": "internal.svc:9000"}), h)
    sent = request_head(forwarded, b"127.0.0.1", Origin(), b"id1")
    assert b"\r\nHost: internal.svc:9000\r\n" in sent and b"a.com" not in sent
    assert forwarded.host == "internal.svc" and h.host == "a.com"  # the original is kept for the log


class Origin:
    scheme, port, by = b"http", b"8080", b"127.0.0.1:8080"


# --- header edits -----------------------------------------------------------------------------

def edits(*triples):
    return [{"action": a, "name": n, "value": v} for a, n, v in triples]


def test_request_header_edits_apply_in_order():
    h = head(b"/", extra=b"X-A: 1\r\nx-a: 2\r\nX-B: keep\r\nX-Gone: x\r\n")
    r = route(request_headers=edits(("SET", "X-A", "set"), ("ADD", "X-A", "added"), ("REMOVE", "X-Gone", ""),
                                    ("ADD", "X-New", "v")))
    fields = rules.forwarded(r, h).headers
    assert fields == [(b"Host", b"a.com"), (b"X-B", b"keep"), (b"X-A", b"set"), (b"X-A", b"added"),
                      (b"X-New", b"v")]
    sent = request_head(rules.forwarded(r, h), b"127.0.0.1", Origin(), b"id1")
    assert b"X-Gone" not in sent and sent.count(b"X-A: ") == 2


def test_response_header_edits():
    response, _ = parse_response_head(b"HTTP/1.1 200 OK\r\nServer: x\r\nX-Keep: 1\r\nContent-Length: 2\r\n\r\n", b"GET")
    from sozu.http.headers import response_head
    sent = response_head(response, b"id1", True, False)
    r = route(response_headers=edits(("REMOVE", "Server", ""), ("SET", "X-Frame-Options", "DENY"),
                                     ("ADD", "X-Keep", "2")))
    edited = rules.edit_response(r, sent)
    assert edited.startswith(b"HTTP/1.1 200 OK\r\n") and edited.endswith(b"\r\n\r\n")
    lines = edited[:-4].split(b"\r\n")[1:]
    assert lines == [b"X-Keep: 1", b"Content-Length: 2", b"Sozu-Id: id1", b"X-Frame-Options: DENY", b"X-Keep: 2"]
    assert rules.edit_response(route(), sent) is sent
    assert parse_response_head(edited, b"GET")[0].content_length == 2


# --- custom answers (sozu.http.answers) ---------------------------------------------------------

from sozu.http import answers  # noqa: E402


def test_a_custom_answer_template_is_filled_in_and_framed_again():
    text = ("HTTP/1.1 503 Service Unavailable\nContent-Type: text/html\nContent-Length: 3\nConnection: keep-alive\n"
            "X-Request: %REQUEST_ID\n\n<h1>%STATUS</h1><p>%ROUTE: %MESSAGE</p>\n")
    rendered = answers.template(text).render(b"abc-1", "shop", 503, "no <backend>\r\nat all")
    head, body = rendered.split(b"\r\n\r\n", 1)
    assert body == b"<h1>503</h1><p>shop: no &lt;backend&gt; at all</p>\n"
    parsed, _ = parse_response_head(rendered, b"GET")
    assert parsed.status == 503 and parsed.content_length == len(body) and not parsed.keep_alive
    assert b"X-Request: abc-1\r\n" in head and head.count(b"Content-Length") == 1


@pytest.mark.parametrize("text, problem", [
    ("not http\n\nbody", "malformed status line"),
    ("HTTP/1.1 503 Busy\nbody without an empty line", "no empty line"),
    ("HTTP/1.1 503 Busy\nX-Broken\n\n", "header line without a colon"),
    ("HTTP/1.1 100 Continue\n\n", "informational"),
    ("HTTP/1.1 503 Busy\nX-Id: %MESSAGE\x01\n\n", ""),
])
def test_a_template_that_is_no_http_answer_is_refused(text, problem):
    with pytest.raises(ValueError) as error:
        answers.check(text)
    assert problem in str(error.value)
