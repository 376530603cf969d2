"""Saved-state files, written by forked children so that the master's loop never waits on a disk
(master only).

Theory of operation
-------------------
Writing a state file means serialising every order and two fsyncs: on a slow disk that takes
as long as the disk wants. The master's loop serves every command client and every worker
channel, so it never does it itself: it forks a child, which already holds the state as of the
fork (copy-on-write memory), writes it and exits. The child reports on a pipe, in one write
shorter than PIPE_BUF: "OK <number of orders>" or "ERROR <reason>"; the master reads it when it
reaps the child (waitpid in its loop, like a worker's exit), so nothing here blocks.

A file is written atomically (write_atomically): a temporary file beside it, written and
fsynced, renamed over it, then the directory fsynced. A crash at any point, of the child or of
the master, leaves the old file or the new one, whole, never a mix and never none.

automatic_state_save: each change counts one; at most one automatic save runs at a time, and a
change made while it runs starts another once it is done, with the state of then. A waiter
(when_saved) is called once a save holding every change made before it has finished, so the
answer to a change can wait until the file holds it (docs/architecture.md, "Life of an order").
A save that fails is logged and counts as done: the change is made, in the master and in the
workers, and a file that could not be written must not hold the answer back for ever.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from sozu.messages import dump_orders

log = logging.getLogger("sozu.master")


def temporary_path(path: str, pid: int) -> str:
    """Where the process `pid` writes `path` before renaming it."""
    return f"{path}.tmp.{pid}"


def write_atomically(path: str, data: bytes) -> None:
    """The bytes in `path`, atomically; OSError says what failed."""
    tmp = temporary_path(path, os.getpid())
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass  # not created: nothing to remove
        raise
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    except OSError as error:  # some file systems cannot fsync a directory
        log.debug("could not fsync the directory of %s: %s", path, error)
    finally:
        os.close(directory)


class _Save:
    """One child writing one file."""

    def __init__(self, pid: int, report_fd: int, path: str, on_done, changes: int):
        self.pid, self.report_fd, self.path = pid, report_fd, path
        self.on_done = on_done      # on_done(error: str | None, orders: int)
        self.changes = changes      # the changes the file holds, for automatic saves


class StateSaver:
    def __init__(self, autosave_path: str | None):
        self.autosave_path = autosave_path  # None: automatic_state_save is off
        self.saves: dict[int, _Save] = {}   # by pid
        self.changes = 0                    # changes made so far
        self.saved_through = 0              # changes that the last automatic save holds
        self.autosaving: _Save | None = None
        self.dirty = False                  # a change arrived while autosaving ran
        self.state = None                   # the state an automatic save writes
        self.waiters: list[tuple[int, object]] = []

    @property
    def busy(self) -> bool:
        return bool(self.saves)

    def save(self, state, path: str, on_done) -> None:
        """Write `state` to `path` from a child; on_done(error or None, orders) once done.
        OSError when the child cannot be forked."""
        self._start(state, path, on_done, self.changes)

    def changed(self, state) -> None:
        """A change was applied to `state` (the master's): the automatic save follows."""
        if self.autosave_path is None:
            return
        self.changes += 1
        self.state = state
        if self.autosaving is not None:
            self.dirty = True
        else:
            self._autosave()

    def when_saved(self, callback) -> None:
        """callback() once the saved state holds every change made so far (at once when it
        does, or without automatic_state_save)."""
        if self.saved_through >= self.changes:
            callback()
        else:
            self.waiters.append((self.changes, callback))

    def child_exited(self, pid: int, how: str) -> bool:
        """Reaping: True when `pid` was one of our children (and it is dealt with)."""
        save = self.saves.pop(pid, None)
        if save is None:
            return False
        try:
            report = os.read(save.report_fd, 4096).decode("utf-8", "replace")
        except BlockingIOError:
            report = ""
        finally:
            os.close(save.report_fd)
        verdict, _, detail = report.partition(" ")
        if verdict == "OK":
            save.on_done(None, int(detail))
        elif verdict == "ERROR":
            save.on_done(detail, 0)
        else:  # killed (or a bug): it may have left its temporary file behind
            try:
                os.unlink(temporary_path(save.path, pid))
            except FileNotFoundError:
                pass  # killed before it opened it, or after the rename
            except OSError as error:
                log.warning("cannot remove the temporary file of a state save: %s", error)
            save.on_done(f"the saving process ended without a word ({how})", 0)
        return True

    def close_in_child(self) -> None:
        for save in self.saves.values():
            os.close(save.report_fd)

    # -- automatic saves -------------------------------------------------------------------------
    def _autosave(self) -> None:
        changes = self.changes

        def done(error, orders):
            self.autosaving = None
            if error is not None:
                log.error("automatic state save failed: %s", error)
            self.saved_through = changes
            ready = [callback for through, callback in self.waiters if through <= changes]
            self.waiters = [(through, callback) for through, callback in self.waiters if through > changes]
            for callback in ready:
                callback()
            if self.dirty:
                self.dirty = False
                self._autosave()

        try:
            self.autosaving = self._start(self.state, self.autosave_path, done, changes)
        except OSError as error:
            done(f"cannot fork the saving process: {error.strerror or error}", 0)

    def _start(self, state, path: str, on_done, changes: int) -> _Save:
        report_r, report_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError:
            os.close(report_r)
            os.close(report_w)
            raise
        if pid == 0:  # the child: never returns into the master's code
            _write_and_exit(state, path, report_w)
        os.close(report_w)
        os.set_blocking(report_r, False)
        save = _Save(pid, report_r, path, on_done, changes)
        self.saves[pid] = save
        return save


def _write_and_exit(state, path: str, report_fd: int) -> None:
    code = 1
    try:
        signal.set_wakeup_fd(-1)  # the master's wake-up pipe is the master's
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR2, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        orders = state.to_orders()
        try:
            write_atomically(path, dump_orders(orders))
            report = f"OK {len(orders)}"
            code = 0
        except OSError as error:
            report = f"ERROR cannot save the state to {path}: {error.strerror or error}"
        os.write(report_fd, report.encode("utf-8")[:512])
    except BaseException:  # the saving child's edge: a bug is logged, and the child exits below
        log.exception("the state saving process failed")
    finally:  # whatever happened, the child never runs the master's code
        os._exit(code)
