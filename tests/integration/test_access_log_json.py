"""JSON access lines, and access log targets that cannot be written: a pipe nobody reads, a
closed pipe, a full disk. None of them stops or slows the traffic."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.integration.harness import (PYTHON, ROOT, Sozu, free_port, http_apps_config, request,
                                       wait_for)


def config(tmp_path, port, backend_port, extra: str) -> str:
    text = http_apps_config(tmp_path, port, {"app": {"fronts": [("localhost", "")],
                                                     "backends": [f"127.0.0.1:{backend_port}"]}},
                            worker_count=1, extra=extra)
    return text.replace('log_access_target = "stdout"\n', "")


def test_json_lines_have_the_fields_the_request_id_and_the_times(tmp_path, sozu, backend):
    b = backend("logged")
    port = free_port()
    access = tmp_path / "access.log"
    sozu(config(tmp_path, port, b.port, f'log_access_target = "file://{access}"\nlog_access_format = "json"'))
    answers = [request(port, path="/one"), request(port, path="/slow/0.2"),
               request(port, host="nowhere.test")]

    def lines():
        found = [json.loads(line) for line in access.read_text().splitlines()] if access.exists() else []
        return found if len(found) == 3 else None
    one, slow, missing = wait_for(lines, 10, what="three JSON access lines")
    assert one["type"] == "http" and one["process"] == "WRK-0" and one["time"].endswith("Z")
    assert (one["client"], one["application"], one["backend"]) == ("127.0.0.1", "app", f"127.0.0.1:{b.port}")
    assert (one["status"], one["method"], one["host"], one["path"]) == (200, "GET", "localhost", "/one")
    assert one["bytes_in"] > 30 and one["bytes_out"] > 100
    assert one["request_id"] == answers[0].header("Sozu-Id")
    assert 0 <= one["connect_ms"] <= one["first_byte_ms"] <= one["total_ms"]
    assert slow["first_byte_ms"] >= 200 and slow["total_ms"] >= slow["first_byte_ms"]
    assert slow["request_id"] == answers[1].header("Sozu-Id") != one["request_id"]
    assert (missing["status"], missing["application"], missing["connect_ms"], missing["first_byte_ms"]) == (
        404, "-", None, None)
    assert missing["request_id"] is None and answers[2].header("Sozu-Id") is None  # none was made


class PipedSozu(Sozu):
    """sozu whose stdout (its access log) is a pipe the test holds, and does not read."""

    def start(self, wait: bool = True, env=None) -> "PipedSozu":
        self.log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [PYTHON, str(ROOT / "sozu.py"), "start", "-c", str(self.config_path)],
            stdout=subprocess.PIPE, stderr=self.log_file, cwd=str(self.dir), start_new_session=True)
        if wait:
            self.wait_ready()
        return self


@pytest.mark.parametrize("target", ["a pipe nobody reads", "a closed pipe", "a full disk"])
def test_an_unwritable_access_log_never_stops_traffic(tmp_path, backend, target):
    b = backend("b1")
    port = free_port()
    main_log = tmp_path / "main.log"
    access = 'log_access_target = "file:///dev/full"\n' if target == "a full disk" else ""
    s = PipedSozu(tmp_path, config(tmp_path, port, b.port,
                                   f'log_target = "file://{main_log}"\n{access}log_access_format = "json"'))
    try:
        s.start()
        if target == "a closed pipe":
            s.process.stdout.close()
        # 2,000 lines of about 400 bytes: far more than a pipe holds (64 KiB)
        for _ in range(2000):
            assert request(port, path="/a-rather-long-path/" + "x" * 100, timeout=2).status == 200
        reason = {"a pipe nobody reads": "EAGAIN", "a closed pipe": "EPIPE", "a full disk": "ENOSPC"}[target]
        text = wait_for(lambda: (t := main_log.read_text()) and f"access log: cannot write ({reason})" in t and t,
                        5, what="the failure reported")
        assert text.count("access log: cannot write") == 1, "reported once, not once per line"
        assert s.ctl("status").returncode == 0
    finally:
        if s.process is not None and s.process.stdout is not None and not s.process.stdout.closed:
            os.set_blocking(s.process.stdout.fileno(), False)
            s.process.stdout.close()
        s.stop()
