"""The workers' system call filter (sozu.seccomp), seen from the outside: loaded in every worker,
traffic unaffected, and a forbidden call made on purpose (a test order, SOZU_TEST_ORDERS=1) kills
the worker, which the master replaces and reports, or fails with EPERM."""
from __future__ import annotations

import pytest

from sozu import sandbox, seccomp
from tests.integration.harness import free_port, http_config, request, wait_for

pytestmark = pytest.mark.skipif(seccomp.check() is not None, reason=f"seccomp: {seccomp.check()}")

TEST_ORDERS = {"SOZU_TEST_ORDERS": "1"}


def start(tmp_path, sozu, backend, extra: str = "", env=None):
    port = free_port()
    s = sozu(http_config(tmp_path, port, [backend("b1").port], worker_count=1, extra=extra), env=env)
    s.port = port
    return s


def worker_pid(s) -> int:
    (worker,) = s.workers()
    return worker["pid"]


def test_workers_serve_under_the_filter_by_default(tmp_path, sozu, backend):
    s = start(tmp_path, sozu, backend)
    assert sandbox.describe(worker_pid(s))["seccomp"] == 2
    assert request(s.port).status == 200


def test_the_filter_can_be_turned_off(tmp_path, sozu, backend):
    s = start(tmp_path, sozu, backend, extra="sandbox = { seccomp = false }")
    assert sandbox.describe(worker_pid(s))["seccomp"] == 0
    assert request(s.port).status == 200


@pytest.mark.parametrize("call", ["execve", "ptrace"])
def test_a_forbidden_call_kills_the_worker_which_is_replaced(tmp_path, sozu, backend, call):
    s = start(tmp_path, sozu, backend, env=TEST_ORDERS)
    pid = worker_pid(s)
    answer = s.order("TEST_FORBIDDEN_CALL", call)
    assert answer["status"] == "ERROR" and "worker exited" in answer["message"], answer
    wait_for(lambda: "sandbox violation" in s.log(), what="the violation in the master's log")
    assert f"(pid {pid}) sandbox violation" in s.log()
    s.wait_ready(workers=1)
    assert worker_pid(s) != pid
    assert request(s.port).status == 200


def test_with_action_eperm_a_forbidden_call_fails_and_the_worker_goes_on(tmp_path, sozu, backend):
    s = start(tmp_path, sozu, backend, extra='sandbox = { seccomp_action = "eperm" }', env=TEST_ORDERS)
    pid = worker_pid(s)
    answer = s.order("TEST_FORBIDDEN_CALL", "execve")
    assert answer["status"] == "OK", answer
    assert answer["data"]["workers"] == {"0": "execve: Operation not permitted"}
    assert worker_pid(s) == pid
    assert request(s.port).status == 200


def test_test_orders_do_not_exist_without_the_test_flag(tmp_path, sozu, backend):
    s = start(tmp_path, sozu, backend)
    answer = s.order("TEST_FORBIDDEN_CALL", "execve")
    assert answer["status"] == "ERROR" and "unknown order type" in answer["message"], answer
