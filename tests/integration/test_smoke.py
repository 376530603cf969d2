"""The first thing a user does: start sozu, send a request through it."""
import http.client
import subprocess

from tests.integration.harness import PYTHON, ROOT


def test_a_request_goes_through_and_back(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("GET", "/hello", headers={"Host": "localhost"})
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200
    assert b'"path": "/hello"' in body
    assert response.getheader("Sozu-Id")


def test_unknown_host_is_404_with_connection_close(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("GET", "/", headers={"Host": "unknown.example"})
    response = conn.getresponse()
    assert response.status == 404
    assert response.getheader("Connection") == "close"
    assert b"No application" in response.read()


def test_import_of_master_leaves_gevent_out():
    code = "import sys, sozu.master, sozu.commands, sozu.command_socket, sozu.fanout, sozu.startup; print('gevent' in sys.modules)"
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
