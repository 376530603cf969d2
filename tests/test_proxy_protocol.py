"""PROXY protocol v1/v2: the strict parser, the read-size helper and the encoders (pure)."""
import struct

import pytest

from sozu.proxy_protocol import (V2_SIGNATURE, ProxyHeader, ProxyProtocolError, bytes_wanted,
                                 encode_v1, encode_v2, parse)


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", command, family, len(body)) + body


TCP4_BODY = bytes([192, 0, 2, 1]) + bytes([198, 51, 100, 7]) + struct.pack("!HH", 51000, 443)
TCP6_BODY = (bytes.fromhex("20010db8000000000000000000000001") +
             bytes.fromhex("20010db8000000000000000000000002") + struct.pack("!HH", 1234, 80))

VALID = [
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 51000 443\r\n", "TCP4", ("192.0.2.1", 51000), ("198.51.100.7", 443)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n", "TCP6", ("2001:db8::1", 1234), ("2001:db8::2", 80)),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", "TCP4", ("0.0.0.0", 0), ("255.255.255.255", 65535)),
    (b"PROXY UNKNOWN\r\n", "UNKNOWN", None, None),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", "UNKNOWN", None, None),
    (v2(0x21, 0x11, TCP4_BODY), "TCP4", ("192.0.2.1", 51000), ("198.51.100.7", 443)),
    (v2(0x21, 0x21, TCP6_BODY), "TCP6", ("2001:db8::1", 1234), ("2001:db8::2", 80)),
    (v2(0x21, 0x00, b""), "UNKNOWN", None, None),
    (v2(0x21, 0x11, TCP4_BODY + b"\x04\x00\x02ab" + b"\x20\x00\x00"), "TCP4", ("192.0.2.1", 51000),
     ("198.51.100.7", 443)),
    (v2(0x21, 0x31, bytes(216)), "UNIX_STREAM", None, None),
]


@pytest.mark.parametrize("data,family,source,destination", VALID)
def test_valid_headers_parse_and_leave_what_follows(data, family, source, destination):
    header, used = parse(data + b"GET / HTTP/1.1\r\n")
    assert used == len(data)
    assert (header.family, header.source, header.destination) == (family, source, destination)
    assert header.raw == data
    assert bytes_wanted(data) == 0


@pytest.mark.parametrize("data", [d for d, *_ in VALID])
def test_every_strict_prefix_is_incomplete_and_reading_never_overshoots(data):
    """Read as the worker does: bytes_wanted() bytes at a time (or up to the LF for v1)."""
    for cut in range(len(data)):
        assert parse(data[:cut]) is None
        wanted = bytes_wanted(data[:cut])
        if wanted is None:
            assert data.startswith(b"PROXY")
        else:
            assert 0 < wanted <= len(data) - cut


def test_v2_tlvs_and_local():
    header, _ = parse(v2(0x21, 0x11, TCP4_BODY + b"\x04\x00\x02ab"))
    assert header.tlvs == ((4, b"ab"),)
    header, used = parse(v2(0x20, 0x11, b"\xff" * 5))  # LOCAL: content ignored
    assert header.local and header.source is None and used == 21


INVALID = [
    (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
    (b"PROXYTCP4", "not a PROXY protocol header"),
    (b"proxy TCP4 1.2.3.4 1.2.3.4 1 1\r\n", "not a PROXY protocol header"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1\n", "LF without CR"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1\r\r\n", "CR inside"),
    (b"PROXY TCP4  1.2.3.4 1.2.3.4 1 1\r\n", "single spaces"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1 \r\n", "4 fields"),
    (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 1\r\n", "unknown protocol"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "4 fields"),
    (b"PROXY TCP4 1.2.3 1.2.3.4 1 1\r\n", "bad source address"),
    (b"PROXY TCP4 01.2.3.4 1.2.3.4 1 1\r\n", "bad source address"),
    (b"PROXY TCP4 ::1 1.2.3.4 1 1\r\n", "bad source address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 1\r\n", "bad source address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 1\r\n", "bad source address"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 1\r\n", "out of range"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 080 1\r\n", "bad source port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 +80 1\r\n", "bad source port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 1\r\n", "bad source port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 \xd9\xa1\r\n", "non-ASCII"),
    (b"PROXY TCP4 " + b"1" * 100, "without CRLF"),
    (b"\r\n\r\n\x00\r\nQUIX\n", "bad v2 signature"),
    (V2_SIGNATURE + b"\x11", "version 1"),
    (V2_SIGNATURE + b"\x22", "unknown command"),
    (V2_SIGNATURE + b"\x21\x13", "unknown address family"),
    (V2_SIGNATURE + b"\x21\x11\x00\x0b", "less than the 12"),
    (v2(0x21, 0x21, TCP4_BODY), "less than the 36"),
    (v2(0x21, 0x11, TCP4_BODY + b"\x04\x00"), "truncated TLV"),
    (v2(0x21, 0x11, TCP4_BODY + b"\x04\x00\x05ab"), "overruns"),
]


@pytest.mark.parametrize("data,message", INVALID)
def test_invalid_headers_are_refused_with_a_reason(data, message):
    with pytest.raises(ProxyProtocolError, match=message):
        parse(data)


def test_garbage_is_refused_at_its_first_byte_not_after_a_timeout():
    for data in (b"G", b"\x16", b"\r\n\r\n\x01"):
        with pytest.raises(ProxyProtocolError):
            parse(data)
    with pytest.raises(ProxyProtocolError):
        bytes_wanted(b"\x16\x03\x01")


def test_read_sizes():
    assert bytes_wanted(b"") == 15
    assert bytes_wanted(b"PROXY") == 10
    assert bytes_wanted(b"PROXY TCP4 1.2.3.4") is None          # v1: up to the LF
    assert bytes_wanted(V2_SIGNATURE) == 3                       # 15 first, always safe
    assert bytes_wanted(V2_SIGNATURE + b"\x21\x11\x00") == 1
    assert bytes_wanted(V2_SIGNATURE + b"\x21\x11\x00\x0c") == 12


@pytest.mark.parametrize("source,destination", [
    (("192.0.2.1", 1234), ("198.51.100.7", 443)),
    (("2001:db8::1", 1), ("2001:db8::2", 65535)),
])
def test_encoders_round_trip(source, destination):
    for encode, version in ((encode_v1, 1), (encode_v2, 2)):
        data = encode(source, destination)
        header, used = parse(data)
        assert used == len(data)
        assert (header.version, header.source, header.destination) == (version, source, destination)


def test_encoders_map_mixed_families_into_ipv6():
    header, _ = parse(encode_v2(("192.0.2.1", 1), ("::1", 2)))
    assert header.family == "TCP6" and header.source == ("::ffff:c000:201", 1)
    assert encode_v1(("192.0.2.1", 1), ("::1", 2)) == b"PROXY TCP6 ::ffff:c000:201 ::1 1 2\r\n"


def test_unknown_ends_encode_as_unknown_and_local():
    assert encode_v1(None, None) == b"PROXY UNKNOWN\r\n"
    header, _ = parse(encode_v2(None, None))
    assert header == ProxyHeader(2, "UNKNOWN", raw=encode_v2(None, None))
    header, _ = parse(encode_v2(None, None, local=True))
    assert header.local
