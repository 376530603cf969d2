"""One access-log line per request, to log_access_target: client, application, backend, status,
method, host, path, bytes in and out, duration."""
import re
import socket

from tests.integration.harness import free_port, http_apps_config, read_response, request, wait_for

LINE = re.compile(r"ACCESS WRK-0 \d+ (?P<client>\S+) (?P<app>\S+) (?P<backend>\S+) (?P<status>\d+) (?P<method>\S+) "
                  r"(?P<host>\S+) (?P<path>\S+) in=(?P<bytes_in>\d+) out=(?P<bytes_out>\d+) (?P<ms>[\d.]+)ms$")


def access_lines(path) -> list[dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = [LINE.search(line) for line in text.splitlines()]
    assert all(lines), text
    return [m.groupdict() for m in lines]


def test_one_line_per_request_with_its_facts(tmp_path, sozu, backend):
    b = backend("logged")
    port = free_port()
    access = tmp_path / "access.log"
    config = http_apps_config(tmp_path, port, {"app": {"fronts": [("localhost", "")],
                                                       "backends": [f"127.0.0.1:{b.port}"]}})
    s = sozu(config.replace('log_access_target = "stdout"', f'log_access_target = "file://{access}"'))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, sock.makefile("rb") as reader:
        for path in (b"/one", b"/two?q=1", b"/size/5000"):
            sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
            read_response(reader)
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
                     + b"u" * 1000)
        read_response(reader)
    request(port, "GET", "/", host="nowhere.test")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        sock.recv(65536)
    socket.create_connection(("127.0.0.1", port)).close()  # no request: no line
    request(port, "HEAD", "/last")
    lines = wait_for(lambda: (lambda found: found if len(found) >= 7 else None)(access_lines(access)),
                     what="seven access lines")
    assert len(lines) == 7
    one, two, size, post, missing, garbage, last = lines
    backend_address = f"127.0.0.1:{b.port}"
    assert one["client"] == "127.0.0.1" and one["app"] == "app" and one["backend"] == backend_address
    assert (one["status"], one["method"], one["host"], one["path"]) == ("200", "GET", "localhost", "/one")
    assert two["path"] == "/two", "the path, without the query"
    assert int(size["bytes_out"]) > 5000 and int(one["bytes_in"]) > 30
    assert post["method"] == "POST" and int(post["bytes_in"]) > 1000
    assert (missing["status"], missing["app"], missing["backend"], missing["host"]) == ("404", "-", "-",
                                                                                       "nowhere.test")
    assert garbage["status"] == "400" and garbage["method"] == "-"
    assert last["method"] == "HEAD" and last["path"] == "/last"
    assert all(float(line["ms"]) < 5000 for line in lines)
    assert "ACCESS" not in s.log(), "access lines go to their own target only"


def test_access_log_off(tmp_path, sozu, backend):
    b = backend("quiet")
    port = free_port()
    config = http_apps_config(tmp_path, port, {"app": {"fronts": [("localhost", "")],
                                                       "backends": [f"127.0.0.1:{b.port}"]}})
    s = sozu(config.replace('log_access_target = "stdout"', 'log_access_target = "off"'))
    for _ in range(3):
        assert request(port, "GET", "/").status == 200
    assert request(port, "GET", "/", host="nowhere.test").status == 404
    assert "ACCESS" not in s.log()
