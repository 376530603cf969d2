"""The systemd service notification protocol (sd_notify(3)), for a master run by conf/sozu.service.

systemd names a unix datagram socket in NOTIFY_SOCKET (an abstract one when it starts with "@");
a Type=notify service writes newline-separated assignments to it:
- READY=1 once every worker serves, so `systemctl start` returns when the proxy answers;
- STOPPING=1 when a stop begins;
- MAINPID=N from a master started by an upgrade, before the old master is told it may go:
  without it systemd would take the old master's exit for the end of the service and kill the
  new generation with it (docs/systemd.md).
Outside systemd (no NOTIFY_SOCKET) every call does nothing. A failed send is logged and ignored:
the proxy serves whether or not its supervisor hears it.
"""
import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*assignments: str) -> bool:
    """Send assignments such as "READY=1"; True when a supervisor was told."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(assignments).encode(), address)
        return True
    except OSError as error:
        log.warning("could not notify systemd on %s: %s", os.environ["NOTIFY_SOCKET"], error)
        return False
