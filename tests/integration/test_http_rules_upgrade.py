"""Frontend rules and custom answers made at runtime survive an upgrade and a saved state
loaded into another sozu, regex order included (docs/routing.md)."""
from tests.integration.harness import Sozu, echo, free_port, http_config, request
from tests.integration.test_upgrade import _config, master_pid, upgrade


def add_rules(proxy, port: int) -> None:
    address = f"127.0.0.1:{port}"
    for kind, data in [
        ("ADD_APPLICATION", {"app_id": "app", "answer_404": None,
                             "answer_502": "HTTP/1.1 502 Bad Gateway\r\n\r\n%ROUTE failed\n"}),
        ("ADD_HTTP_FRONT", {"app_id": "app", "address": address, "hostname": "rules.test",
                            "path": {"kind": "REGEX", "value": "^/r/[0-9]+$"},
                            "rewrite": {"path_regex": "^/r/([0-9]+)$", "path_replacement": r"/first/\1"}}),
        ("ADD_HTTP_FRONT", {"app_id": "app", "address": address, "hostname": "rules.test",
                            "path": {"kind": "REGEX", "value": "^/r/"},
                            "rewrite": {"strip_prefix": "/r", "host": "second.internal"},
                            "response_headers": [{"action": "SET", "name": "X-Second", "value": "yes"}]}),
        ("ADD_HTTP_FRONT", {"app_id": "app", "address": address, "hostname": "rules.test",
                            "path": {"kind": "EQUALS", "value": "/moved"}, "methods": ["GET"],
                            "redirect": {"status": 307, "host": "elsewhere.test"}}),
    ]:
        answer = proxy.order(kind, data)
        assert answer["status"] == "OK", answer


def check_rules(port: int) -> None:
    assert echo(request(port, "GET", "/r/42", host="rules.test"))["path"] == "/first/42"
    second = request(port, "GET", "/r/abc", host="rules.test")
    assert echo(second)["path"] == "/abc" and echo(second)["header"]("Host") == ["second.internal"]
    assert second.header("X-Second") == "yes"
    moved = request(port, "GET", "/moved", host="rules.test")
    assert (moved.status, moved.header("Location")) == (307, "http://elsewhere.test/moved")
    assert request(port, "POST", "/moved", host="rules.test").status == 404


def test_rules_survive_an_upgrade_and_a_saved_state(tmp_path, sozu, backend):
    b = backend("b1")
    port = free_port()
    proxy = sozu(_config(tmp_path, port, [b.port], worker_count=1))
    add_rules(proxy, port)
    check_rules(port)
    upgrade(proxy, master_pid(proxy))
    check_rules(port)

    saved = tmp_path / "rules.state"
    assert proxy.ctl("state", "save", f"--file={saved}").returncode == 0
    other_dir, other_port = tmp_path / "other", free_port()
    other_dir.mkdir()
    other = Sozu(other_dir, http_config(other_dir, other_port, [b.port], worker_count=1)).start()
    try:
        # The saved state names the first proxy's listener: loaded here re-addressed to this one.
        text = saved.read_text().replace(f"127.0.0.1:{port}", f"127.0.0.1:{other_port}")
        (other_dir / "moved.state").write_text(text)
        assert other.ctl("state", "load", f"--file={other_dir / 'moved.state'}").returncode == 0
        check_rules(other_port)
    finally:
        other.stop()
