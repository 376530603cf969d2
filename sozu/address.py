"""The one parser of `IP:PORT` addresses, for the config file, the orders and sozuctl (pure).

An address is numeric (sozu never resolves names: workers may be chrooted) and IPv6 is written
in brackets, as in a URL. The normal form is ipaddress's spelling with the port in decimal, so
two spellings of one address compare equal: `[0:0::1]:080` and `[::1]:80` are one listener.
"""
from __future__ import annotations

import functools
import ipaddress


class AddressError(ValueError):
    """`args` is (what is wrong, what was expected), for the caller to phrase."""


@functools.lru_cache(maxsize=4096)  # orders name the same few addresses again and again
def parse(text: str) -> str:
    """`127.0.0.1:8080`, `[::1]:8080` -> the normal form; else AddressError(what, expected)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise AddressError("not an address", "[IPv6]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            raise AddressError("IPv6 address without brackets", "[IPv6]:PORT, like [::1]:8080")
    if not sep or not port.isascii() or not port.isdigit() or len(port) > 5:
        raise AddressError("not an IP:PORT address", "a numeric IP:PORT like 127.0.0.1:8080")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise AddressError("not a numeric address", "a numeric IP:PORT; sozu never resolves names") from None
    if ip.version == 6 and ip.scope_id is not None:
        raise AddressError("an IPv6 scope (%zone) is not supported", "[IPv6]:PORT without %zone")
    if text.startswith("[") and ip.version != 6:
        raise AddressError("brackets around an IPv4 address", "IPv4:PORT or [IPv6]:PORT")
    if not 1 <= int(port) <= 65535:
        raise AddressError("port out of range", "a port 1..65535")
    return f"[{ip}]:{int(port)}" if ip.version == 6 else f"{ip}:{int(port)}"


def split(address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """A normal-form address -> (ip, port)."""
    host, _, port = address.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")), int(port)


def sockaddr(address: str) -> tuple[int, tuple]:
    """'127.0.0.1:80' -> (AF_INET, ('127.0.0.1', 80)); '[::1]:80' -> (AF_INET6, ('::1', 80)).
    The address is in the normal form (the config file and the orders give no other).
    (socket is imported here, by the shell that opens sockets: the pure modules that parse
    addresses never load it.)"""
    import socket
    ip, port = split(address)
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), (str(ip), port)
