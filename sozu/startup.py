"""Start-up of the master: from a validated Config to a running Master.

The order of the steps is the design: everything that can fail for a reason the operator must
fix (the state the config produces, a saved state, the file-descriptor limit, binding, the
sandbox's user and group) fails here, before any worker exists, with one line naming the cause.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import resource
import sys

from sozu import logs, pid_file
from sozu.command_socket import CommandSocket
from sozu.listeners import ListenerSockets
from sozu.master import Master
from sozu.messages import MessageError, load_orders
from sozu.state import ConfigState, StateError

log = logging.getLogger("sozu.master")

# Per worker, beyond its client connections: a backend connection per client at most, plus
# listeners, channel, logs and pooled backend connections.
FDS_PER_CONNECTION = 2
FDS_MARGIN = 256


class StartupError(Exception):
    pass


def build_state(config, handed_over: bytes | None = None) -> ConfigState:
    if handed_over is not None:  # an upgrade: the running state, runtime changes included
        return ConfigState.from_orders(load_orders(handed_over))
    state = ConfigState()
    for order in config.to_orders():
        state.dispatch(order)
    if config.saved_state and os.path.exists(config.saved_state):
        with open(config.saved_state, "rb") as file:
            saved = ConfigState.from_orders(load_orders(file.read()))
        for order in state.diff(saved):
            state.dispatch(order)
        log.info("loaded the saved state from %s", config.saved_state)
    return state


def fit_fd_limit(config):
    """Each worker holds its own descriptors: max_connections client sockets and as many backend
    sockets. RLIMIT_NOFILE is per process, so it must fit one worker's share, not the sum over
    workers; the sum (x worker_count) is compared with the system-wide fs.file-max, and only
    warned about: a host rarely has every worker full at once. Raise the soft limit to fit.
    When the hard limit is too low, a max_connections the file sets is refused, and the default
    one is lowered to fit (as HAProxy derives its maxconn from the limit). Returns the config to
    run with."""
    needed = config.max_connections * FDS_PER_CONNECTION + FDS_MARGIN
    _warn_over_file_max(needed * config.worker_count)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return config
    if hard == resource.RLIM_INFINITY or hard >= needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        log.info("raised the file descriptor limit from %d to %d", soft, needed)
        return config
    try:  # root with CAP_SYS_RESOURCE may raise the hard limit too
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
        log.info("raised the file descriptor limit from %d to %d", soft, needed)
        return config
    except (ValueError, OSError):
        if "max_connections" in config.explicit:
            raise StartupError(
                f"max_connections = {config.max_connections} needs {needed} file descriptors per "
                f"worker, but the hard limit (ulimit -Hn) is {hard}: lower max_connections or "
                f"raise the limit") from None
    fitted = (hard - FDS_MARGIN) // FDS_PER_CONNECTION
    if fitted < 1:
        raise StartupError(f"the file descriptor hard limit (ulimit -Hn) {hard} is too low to serve")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log.warning("max_connections lowered from %d to %d per worker to fit the file descriptor "
                "hard limit (ulimit -Hn) of %d", config.max_connections, fitted, hard)
    return dataclasses.replace(config, max_connections=fitted)


def _warn_over_file_max(total: int) -> None:
    try:
        with open("/proc/sys/fs/file-max") as file:
            file_max = int(file.read())
    except (OSError, ValueError):
        return
    if total > file_max:
        log.warning("max_connections x worker_count needs up to %d file descriptors, more than the "
                    "system allows in all (fs.file-max = %d)", total, file_max)


def sandbox_plan(config):
    from sozu import sandbox
    try:
        return sandbox.plan(config.user, config.group, config.chroot, seccomp_action(config))
    except sandbox.SandboxError as error:
        raise StartupError(f"sandbox: {error}") from None


def seccomp_action(config) -> str | None:
    """The workers' seccomp action, or None: off in the file, or not possible here. On by
    default, a missing kernel feature or libseccomp is a warning; asked for in the file's
    sandbox table, it is a start-up error."""
    if not config.sandbox.seccomp:
        return None
    from sozu import seccomp
    reason = seccomp.check()
    if reason is None:
        return config.sandbox.seccomp_action
    if "sandbox" in config.explicit:
        raise StartupError(f"sandbox.seccomp: {reason}; set sandbox.seccomp = false to run "
                           "workers without a system call filter")
    log.warning("seccomp: %s: workers run without a system call filter", reason)
    return None


def start(config) -> int:
    logs.setup(config.log_level, config.log_target, config.log_access_target, "MASTER",
               config.log_access_format)
    if os.environ.get("SOZU_TEST_ORDERS") == "1":  # tests of the sandbox only (sozu.messages)
        from sozu.messages import enable_test_orders
        enable_test_orders()
    from sozu.upgrade import take_handover
    handed_over, ready_fd, generation = take_handover()
    try:
        state = build_state(config, handed_over)
        config = fit_fd_limit(config)
        plan = sandbox_plan(config)
        listeners = ListenerSockets.open(state.listeners)
        command_socket = CommandSocket.open(config)
    except (StartupError, StateError, MessageError, OSError) as error:
        print(f"sozu: {error}", file=sys.stderr)
        return 1
    master = Master(config, state, listeners, command_socket, generation=generation, sandbox_plan=plan,
                    ready_fd=ready_fd)
    if ready_fd is None:  # after an upgrade, the new master writes it once it serves
        pid_file.write(config.pid_file_path)
    return master.run()
