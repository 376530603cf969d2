"""The PROXY protocol, versions 1 and 2: a strict parser and the encoders (pure).

Theory of operation
-------------------
A load balancer in front of sozu may open each connection with a PROXY header that names the
real client (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt). A listener with
`expect_proxy` reads that header before anything else; an application with `send_proxy` writes
one to its backend.

Reading must never go past the header: what follows belongs to the client's protocol (an HTTP
request, a TLS ClientHello, TCP payload), and for TLS the bytes must stay in the kernel for the
handshake. So the reader asks `bytes_wanted(buf)` how much it may take:

    the first 15 bytes   always (the shortest header, "PROXY UNKNOWN\\r\\n", is 15 bytes)
    v2                   exactly the 16-byte fixed part, then exactly its announced length
    v1                   None: the end is the first LF, so the reader peeks and takes up to it

and `parse(buf)` tells when the header is complete, or raises ProxyProtocolError as soon as the
bytes cannot be the start of a valid header (so garbage is refused after its first byte, not
after a timeout). Pure: no sockets, no clock, no logging.

Strictness (a malformed header closes the connection):
- v1: ASCII, single spaces, CRLF, at most 107 bytes; TCP4 with dotted-quad IPv4, TCP6 with
  IPv6 (no zone), ports 0..65535 in decimal without leading zeros; UNKNOWN ignores the rest of
  its line, as the specification asks.
- v2: the 12-byte signature, version 2, command LOCAL or PROXY, a known family byte, a length
  that holds the family's addresses, and TLVs that fill the rest exactly. LOCAL headers (health
  checks of the proxy in front) are accepted with their content ignored.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # "PROXY TCP6 " + two full IPv6 + two ports + CRLF, from the specification
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16
MIN_HEADER_LENGTH = 15  # b"PROXY UNKNOWN\r\n"

_V2_LOCAL, _V2_PROXY = 0x20, 0x21
# family byte -> (name, length of the address block)
_V2_FAMILIES = {
    0x00: ("UNKNOWN", 0),
    0x11: ("TCP4", 12),
    0x12: ("UDP4", 12),
    0x21: ("TCP6", 36),
    0x22: ("UDP6", 36),
    0x31: ("UNIX_STREAM", 216),
    0x32: ("UNIX_DGRAM", 216),
}

Address = tuple[str, int]


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY header; the text says what is wrong."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int                      # 1 or 2
    family: str                       # TCP4 TCP6 UNKNOWN (v1); also UDP4 UDP6 UNIX_* (v2)
    source: Address | None = None     # None: use the connection's own endpoints
    destination: Address | None = None
    local: bool = False               # v2 LOCAL: the proxy in front speaking for itself
    tlvs: tuple[tuple[int, bytes], ...] = ()
    raw: bytes = b""                  # the header as received (to relay it as it is)


# --- parsing ------------------------------------------------------------------------------------

def bytes_wanted(data: bytes) -> int | None:
    """How many more bytes certainly belong to the header that `data` starts (0: complete);
    None for a v1 header whose end is the next LF. Raises ProxyProtocolError on garbage."""
    if parse(data) is not None:
        return 0
    if len(data) < MIN_HEADER_LENGTH:
        return MIN_HEADER_LENGTH - len(data)
    if data[:1] == V2_SIGNATURE[:1]:
        if len(data) < V2_FIXED_LENGTH:
            return V2_FIXED_LENGTH - len(data)
        return V2_FIXED_LENGTH + struct.unpack_from("!H", data, 14)[0] - len(data)
    return None


def parse(data: bytes) -> tuple[ProxyHeader, int] | None:
    """(header, bytes used) when `data` starts with a complete header; None when it may still
    become one; ProxyProtocolError when it cannot."""
    data = bytes(data)
    if not data:
        return None
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data)
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(data)
    raise ProxyProtocolError(f"not a PROXY protocol header (starts with {data[:8]!r})")


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    head = data[:len(V1_PREFIX)]
    if not V1_PREFIX.startswith(head):
        raise ProxyProtocolError(f"not a PROXY protocol header (starts with {data[:8]!r})")
    end = data.find(b"\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"v1 header without CRLF in its first {V1_MAX_LENGTH} bytes")
        if b"\r" in data[:-1]:
            raise ProxyProtocolError("v1 header with a CR not followed by LF")
        return None
    if end == 0 or data[end - 1] != 0x0D:
        raise ProxyProtocolError("v1 header line ends with LF without CR")
    line = data[:end - 1]
    used = end + 1
    if b"\r" in line:
        raise ProxyProtocolError("v1 header with a CR inside the line")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1 header with non-ASCII bytes") from None
    fields = text.split(" ")
    if len(fields) < 2:
        raise ProxyProtocolError("v1 header without a protocol")
    family = fields[1]
    if family == "UNKNOWN":  # the specification: the rest of the line is to be ignored
        return ProxyHeader(1, "UNKNOWN", raw=data[:used]), used
    if family not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"v1 header with an unknown protocol {family!r}")
    if len(fields) != 6:
        raise ProxyProtocolError(f"v1 {family} header needs 4 fields separated by single "
                                 f"spaces, got {text[len(V1_PREFIX):]!r}")
    version = 4 if family == "TCP4" else 6
    source = (_v1_ip(fields[2], version, "source"), _v1_port(fields[4], "source"))
    destination = (_v1_ip(fields[3], version, "destination"), _v1_port(fields[5], "destination"))
    return ProxyHeader(1, family, source, destination, raw=data[:used]), used


def _v1_ip(text: str, version: int, what: str) -> str:
    try:
        ip = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyProtocolError(f"v1 header: bad {what} address {text!r} for "
                                 f"TCP{version}") from None
    if version == 6 and ip.scope_id is not None:
        raise ProxyProtocolError(f"v1 header: bad {what} address {text!r} (zone not allowed)")
    return str(ip)


def _v1_port(text: str, what: str) -> int:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise ProxyProtocolError(f"v1 header: bad {what} port {text!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"v1 header: {what} port {port} out of range")
    return port


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if not V2_SIGNATURE.startswith(data[:len(V2_SIGNATURE)]):
        raise ProxyProtocolError("bad v2 signature")
    if len(data) > 12 and data[12] not in (_V2_LOCAL, _V2_PROXY):
        if data[12] >> 4 != 2:
            raise ProxyProtocolError(f"v2 header with version {data[12] >> 4}, expected 2")
        raise ProxyProtocolError(f"v2 header with an unknown command {data[12] & 0xF}")
    if len(data) > 13 and data[13] not in _V2_FAMILIES:
        raise ProxyProtocolError(f"v2 header with an unknown address family 0x{data[13]:02x}")
    if len(data) < V2_FIXED_LENGTH:
        return None
    local = data[12] == _V2_LOCAL
    family, address_length = _V2_FAMILIES[data[13]]
    length = struct.unpack_from("!H", data, 14)[0]
    used = V2_FIXED_LENGTH + length
    if len(data) < used:
        if not local and length < address_length:  # refuse now, not when the rest arrives
            raise ProxyProtocolError(f"v2 {family} header with {length} bytes, less than the "
                                     f"{address_length} its addresses need")
        return None
    raw = data[:used]
    if local:  # the specification: accept it and use the real connection endpoints
        return ProxyHeader(2, family, local=True, raw=raw), used
    if length < address_length:
        raise ProxyProtocolError(f"v2 {family} header with {length} bytes, less than the "
                                 f"{address_length} its addresses need")
    body = data[V2_FIXED_LENGTH:used]
    source = destination = None
    if family in ("TCP4", "UDP4"):
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        source = (str(ipaddress.IPv4Address(src)), sport)
        destination = (str(ipaddress.IPv4Address(dst)), dport)
    elif family in ("TCP6", "UDP6"):
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
        source = (str(ipaddress.IPv6Address(src)), sport)
        destination = (str(ipaddress.IPv6Address(dst)), dport)
    tlvs = _parse_tlvs(body[address_length:])
    return ProxyHeader(2, family, source, destination, tlvs=tlvs, raw=raw), used


def _parse_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    tlvs = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyProtocolError(f"v2 header with a truncated TLV at byte {offset}")
        kind, length = struct.unpack_from("!BH", data, offset)
        offset += 3
        if offset + length > len(data):
            raise ProxyProtocolError(f"v2 header: TLV 0x{kind:02x} of {length} bytes overruns "
                                     "the header")
        tlvs.append((kind, data[offset:offset + length]))
        offset += length
    return tuple(tlvs)


# --- encoding -----------------------------------------------------------------------------------

def _same_family(source: Address, destination: Address):
    """(source ip, destination ip) as ipaddress objects of one family: IPv4 is mapped into IPv6
    when the other end is IPv6."""
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        if src.version == 4:
            src = ipaddress.IPv6Address(f"::ffff:{src}")
        else:
            dst = ipaddress.IPv6Address(f"::ffff:{dst}")
    return src, dst


def encode(version: int, source: Address | None, destination: Address | None) -> bytes:
    """The header an application's `send_proxy_version` asks for."""
    return encode_v1(source, destination) if version == 1 else encode_v2(source, destination)


def encode_v1(source: Address | None, destination: Address | None) -> bytes:
    """A v1 header; UNKNOWN when an end is not known."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = _same_family(source, destination)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(source: Address | None, destination: Address | None, local: bool = False,
              tlvs: tuple[tuple[int, bytes], ...] = ()) -> bytes:
    """A v2 header: PROXY over TCP4/TCP6, or LOCAL / UNSPEC when the ends are not known."""
    tlv_bytes = b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in tlvs)
    if local or source is None or destination is None:
        command = _V2_LOCAL if local else _V2_PROXY
        return V2_SIGNATURE + struct.pack("!BBH", command, 0x00, len(tlv_bytes)) + tlv_bytes
    src, dst = _same_family(source, destination)
    family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1]) + tlv_bytes
    if len(body) > 0xFFFF:
        raise ValueError("PROXY v2 header too long")
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body
