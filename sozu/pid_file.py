"""The pid file: written by the master that serves, removed by the last one (master only).

A master started by an upgrade writes it only once it serves (Master.take_over): until then the
file names the master that still does. It is written atomically, so a reader never sees it
empty.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("sozu.master")


def write(path: str | None) -> None:
    if path:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as file:
            file.write(f"{os.getpid()}\n")
        os.replace(tmp, path)


def remove(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            log.debug("pid file already removed")
