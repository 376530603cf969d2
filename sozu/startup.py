"""Start-up of the master: from a validated Config to a running Master.

The order of the steps is the design: everything that can fail for a reason the operator must
fix (the state the config produces, a saved state, the file-descriptor limit, binding, the
sandbox's user and group) fails here, before any worker exists, with one line naming the cause.
"""
from __future__ import annotations

import logging
import os
import resource
import sys

from sozu import listeners, logs
from sozu.messages import MessageError, load_orders
from sozu.state import ConfigState, StateError

log = logging.getLogger("sozu.master")

# Per worker, beyond its client connections: a backend connection per client at most, plus
# listeners, channel, logs and pooled backend connections.
FDS_PER_CONNECTION = 2
FDS_MARGIN = 256


class StartupError(Exception):
    pass


def build_state(config) -> ConfigState:
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


def raise_fd_limit(config) -> None:
    """Each worker holds its own descriptors: max_connections client sockets and as many backend
    sockets. Raise the soft limit to fit, or refuse to start rather than fail under load."""
    needed = config.max_connections * FDS_PER_CONNECTION + FDS_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:  # root (CAP_SYS_RESOURCE) may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
        except (ValueError, OSError):
            raise StartupError(
                f"max_connections = {config.max_connections} needs {needed} file descriptors per "
                f"worker, but the hard limit (ulimit -Hn) is {hard}: lower max_connections or "
                f"raise the limit") from None
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    log.info("raised the file descriptor limit from %d to %d", soft, needed)


def bind_listeners(state: ConfigState) -> dict:
    inherited = listeners.inherited()
    sockets = {}
    for address in state.listeners:
        sock = inherited.pop(address, None)
        if sock is None:
            try:
                sock = listeners.bind(address)
            except OSError as error:
                raise StartupError(f"cannot listen on {address}: {error.strerror}") from None
        sockets[address] = sock
    for address, sock in inherited.items():  # handed over, but no longer configured
        sock.close()
    return sockets


def write_pid_file(path: str | None) -> None:
    if path:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as file:
            file.write(f"{os.getpid()}\n")
        os.replace(tmp, path)


def sandbox_plan(config):
    from sozu import sandbox
    try:
        return sandbox.plan(config.user, config.group, config.chroot)
    except sandbox.SandboxError as error:
        raise StartupError(f"sandbox: {error}") from None


def start(config) -> int:
    logs.setup(config.log_level, config.log_target, config.log_access_target, "MASTER")
    try:
        state = build_state(config)
        raise_fd_limit(config)
        plan = sandbox_plan(config)
        sockets = bind_listeners(state)
        from sozu.command_server import CommandServer
        command_server = CommandServer.open(config)
    except (StartupError, StateError, MessageError, OSError) as error:
        print(f"sozu: {error}", file=sys.stderr)
        return 1
    from sozu.master import Master
    master = Master(config, state, sockets, sandbox_plan=plan)
    command_server.attach(master)
    master.command_server = command_server
    write_pid_file(config.pid_file_path)
    try:
        return master.run()
    finally:
        if master.last_generation:
            command_server.remove_socket_file()
            if config.pid_file_path:
                try:
                    os.unlink(config.pid_file_path)
                except FileNotFoundError:
                    log.debug("pid file already removed")
        log.info("master %d exits", os.getpid())
