"""Sticky sessions: the SOZUBALANCEID cookie names a backend (its sticky_id, else its
backend_id); it is set when the backend differs from the cookie's, followed while that backend
is up, and taken out of the Cookie header sent to the backend (as Sozu does) — only for sticky
applications: for the others the cookie is not sozu's, and is forwarded untouched."""
import pytest

from tests.integration.harness import Backend, Sozu, echo, free_port, http_apps_config, request


@pytest.fixture(scope="module")
def sticky(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sticky")
    one, two = Backend("one"), Backend("two")
    dead = free_port()
    port = free_port()
    apps = {
        "sticky": {"fronts": [("sticky.test", "")], "extra": "sticky_session = true",
                   "backends": [{"address": f"127.0.0.1:{one.port}", "backend_id": "b-one", "sticky_id": "s1"},
                                {"address": f"127.0.0.1:{two.port}", "backend_id": "b-two"}]},
        "sticky_dead": {"fronts": [("dead.test", "")], "extra": "sticky_session = true",
                        "backends": [{"address": f"127.0.0.1:{dead}", "sticky_id": "gone"},
                                     {"address": f"127.0.0.1:{two.port}", "backend_id": "b-two"}]},
        "plain": {"fronts": [("plain.test", "")], "backends": [f"127.0.0.1:{one.port}"]},
    }
    proxy = Sozu(tmp, http_apps_config(tmp, port, apps)).start()
    proxy.port = port
    yield proxy
    proxy.stop()
    one.stop()
    two.stop()


KEYS = {"one": "s1", "two": "b-two"}


def test_first_request_gets_the_cookie_of_its_backend(sticky):
    response = request(sticky.port, "GET", "/", host="sticky.test")
    backend = response.header("X-Backend")
    assert response.header("Set-Cookie") == f"SOZUBALANCEID={KEYS[backend]}; Path=/"


@pytest.mark.parametrize("backend", ["one", "two"])
def test_the_cookie_keeps_the_client_on_its_backend(sticky, backend):
    for _ in range(8):
        response = request(sticky.port, "GET", "/", host="sticky.test",
                           headers={"Cookie": f"SOZUBALANCEID={KEYS[backend]}"})
        assert response.header("X-Backend") == backend
        assert response.header("Set-Cookie") is None, "no new cookie when it already leads there"


def test_an_unknown_sticky_id_gets_a_new_cookie(sticky):
    response = request(sticky.port, "GET", "/", host="sticky.test", headers={"Cookie": "SOZUBALANCEID=nope"})
    assert response.status == 200
    assert response.header("Set-Cookie") == f"SOZUBALANCEID={KEYS[response.header('X-Backend')]}; Path=/"


def test_a_cookie_to_a_dead_backend_moves_the_client(sticky):
    response = request(sticky.port, "GET", "/", host="dead.test", headers={"Cookie": "SOZUBALANCEID=gone"})
    assert response.status == 200 and response.header("X-Backend") == "two"
    assert response.header("Set-Cookie") == "SOZUBALANCEID=b-two; Path=/"


@pytest.mark.parametrize("cookie,forwarded", [
    ("a=1; SOZUBALANCEID=s1; b=2", ["a=1; b=2"]),
    ("SOZUBALANCEID=s1; b=2", ["b=2"]),
    ("a=1;SOZUBALANCEID=s1", ["a=1"]),
    ("SOZUBALANCEID=s1", []),
    ("XSOZUBALANCEID=1; a=2", ["XSOZUBALANCEID=1; a=2"]),
])
def test_the_sticky_cookie_is_not_forwarded(sticky, cookie, forwarded):
    response = request(sticky.port, "GET", "/", host="sticky.test", headers={"Cookie": cookie})
    seen = echo(response)
    assert seen["header"]("Cookie") == forwarded


def test_a_non_sticky_application_gets_every_cookie(sticky):
    seen = echo(request(sticky.port, "GET", "/", host="plain.test", headers={"Cookie": "a=1; SOZUBALANCEID=x"}))
    assert seen["header"]("Cookie") == ["a=1; SOZUBALANCEID=x"]


def test_the_listener_names_the_cookie(tmp_path, sozu, backend):
    one = backend("one")
    port = free_port()
    sozu(http_apps_config(tmp_path, port, {"app": {
        "fronts": [("localhost", "")], "extra": "sticky_session = true",
        "backends": [{"address": f"127.0.0.1:{one.port}", "backend_id": "x1"}]}},
        listener_extra='sticky_name = "LB"'))
    response = request(port, "GET", "/", headers={"Cookie": "LB=x1; SOZUBALANCEID=keep"})
    assert response.header("Set-Cookie") is None
    assert echo(response)["header"]("Cookie") == ["SOZUBALANCEID=keep"]
    assert request(port, "GET", "/").header("Set-Cookie") == "LB=x1; Path=/"
