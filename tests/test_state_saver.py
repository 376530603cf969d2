"""sozu.state_saver: state files written by forked children, atomically, never by the master."""
from __future__ import annotations

import os
import select
import signal
import stat
import time

import pytest

from sozu.messages import Order, load_orders
from sozu.state import ConfigState
from sozu.state_saver import StateSaver, write_atomically


def state_with(*app_ids: str) -> ConfigState:
    return ConfigState.from_orders([Order.from_json({"type": "ADD_APPLICATION", "data": {"app_id": a}})
                                    for a in app_ids])


def reap(saver: StateSaver) -> None:
    """What the master's loop does for the saver's children: waitpid, then child_exited."""
    for pid in list(saver.saves):
        _, status = os.waitpid(pid, 0)
        assert saver.child_exited(pid, f"status {status}")


@pytest.fixture
def fsyncs(monkeypatch, tmp_path_factory):
    """os.fsync fails the test when this process (the master's stand-in) calls it: only the
    forked children may wait on the disk. Each fsync a child makes is written down in a file
    (a child's memory is its own): fsyncs() lists them, "file" or "directory"."""
    parent, real_fsync = os.getpid(), os.fsync
    record = tmp_path_factory.mktemp("fsyncs") / "calls"
    record.write_text("")

    def fsync(fd):
        assert os.getpid() != parent, "the master's process called fsync"
        with open(record, "a") as file:
            file.write("directory\n" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file\n")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return lambda: record.read_text().split()


def test_a_save_is_written_by_a_child_and_answered_when_reaped(tmp_path, fsyncs):
    saver, results = StateSaver(None), []
    path = tmp_path / "state.json"
    saver.save(state_with("a", "b"), str(path), lambda error, orders: results.append((error, orders)))
    assert saver.busy and results == []
    reap(saver)
    assert results == [(None, 2)] and not saver.busy
    assert fsyncs() == ["file", "directory"]
    assert [o.data["app_id"] for o in load_orders(path.read_bytes())] == ["a", "b"]
    assert os.listdir(tmp_path) == ["state.json"], "no temporary file left"


def test_a_save_that_fails_says_why(tmp_path):
    saver, results = StateSaver(None), []
    saver.save(state_with("a"), str(tmp_path / "missing" / "state.json"),
               lambda error, orders: results.append(error))
    reap(saver)
    assert results == [f"cannot save the state to {tmp_path}/missing/state.json: No such file or directory"]


def test_changes_are_saved_one_save_at_a_time_and_waiters_wait_for_theirs(tmp_path, fsyncs):
    path = tmp_path / "auto.json"
    saver, state, told = StateSaver(str(path)), state_with("a"), []
    saver.when_saved(lambda: told.append("before any change"))
    saver.changed(state)
    saver.when_saved(lambda: told.append("first"))
    [first] = saver.saves
    state.dispatch(Order.from_json({"type": "ADD_APPLICATION", "data": {"app_id": "b"}}))
    saver.changed(state)  # while the first save runs: a second one follows it
    saver.when_saved(lambda: told.append("second"))
    assert list(saver.saves) == [first] and told == ["before any change"]
    _, status = os.waitpid(first, 0)
    saver.child_exited(first, "done")
    assert told == ["before any change", "first"]
    [second] = saver.saves
    assert second != first
    reap(saver)
    assert told == ["before any change", "first", "second"]
    assert [o.data["app_id"] for o in load_orders(path.read_bytes())] == ["a", "b"]
    assert fsyncs() == ["file", "directory"] * 2, "each save: the file, renamed, then its directory"


def test_a_failed_automatic_save_does_not_hold_the_answer(tmp_path, caplog):
    saver, told = StateSaver(str(tmp_path / "gone" / "auto.json")), []
    saver.changed(state_with("a"))
    saver.when_saved(lambda: told.append("answered"))
    reap(saver)
    assert told == ["answered"] and "automatic state save failed: cannot save the state" in caplog.text


def test_a_crash_before_the_rename_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    path.write_bytes(b"old state\n")

    def crash(src, dst):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_atomically(str(path), b"new state\n")
    assert path.read_bytes() == b"old state\n" and os.listdir(tmp_path) == ["state.json"]


def test_the_file_is_fsynced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    steps = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (steps.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode)
                                                              else "fsync file"), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (steps.append("rename"), real_replace(a, b)))
    write_atomically(str(path), b"state\n")
    assert steps == ["fsync file", "rename", "fsync dir"] and path.read_bytes() == b"state\n"


def test_a_child_stuck_on_the_disk_holds_nothing_up_and_killed_leaves_the_old_file(tmp_path, monkeypatch):
    """The child blocks in its fsync (a disk that never answers): save() has returned at once;
    killed there, the child leaves the previous file whole, its end is reported, and its
    temporary file is removed."""
    path = tmp_path / "state.json"
    path.write_bytes(b"old state\n")
    parent, stuck_r, stuck_w = os.getpid(), *os.pipe()

    def fsync(fd):
        if os.getpid() != parent:
            os.write(stuck_w, b"x")
            time.sleep(60)
    monkeypatch.setattr(os, "fsync", fsync)
    saver, results = StateSaver(None), []
    saver.save(state_with("a"), str(path), lambda error, orders: results.append(error))
    [pid] = saver.saves
    try:
        ready, _, _ = select.select([stuck_r], [], [], 10)
        assert ready, "the child did not reach its fsync"
        assert results == [] and saver.busy
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(stuck_r)
        os.close(stuck_w)
    assert sorted(os.listdir(tmp_path)) == ["state.json", f"state.json.tmp.{pid}"]
    saver.child_exited(pid, "signal SIGKILL")
    assert results == ["the saving process ended without a word (signal SIGKILL)"]
    assert path.read_bytes() == b"old state\n" and os.listdir(tmp_path) == ["state.json"]
