"""sozu.address: the one IP:PORT parser, and the gates that use it (orders, sozuctl, config)."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, strategies as st

from sozu import address
from sozu.address import AddressError
from sozu.ctl import cli
from sozu.messages import MessageError, Order

REFUSED = [
    ("localhost:8080", "not a numeric address"),
    ("example.com:80", "not a numeric address"),
    ("127.0.0.1", "not an IP:PORT address"),
    ("127.0.0.1:", "not an IP:PORT address"),
    (":8080", "not a numeric address"),
    ("127.0.0.1:0", "port out of range"),
    ("127.0.0.1:65536", "port out of range"),
    ("127.0.0.1:123456", "not an IP:PORT address"),
    ("127.0.0.1:+80", "not an IP:PORT address"),
    ("127.0.0.1:٨٠", "not an IP:PORT address"),   # Arabic-Indic digits are digits, not ASCII
    ("127.000.0.1:80", "not a numeric address"),
    ("::1:8080", "IPv6 address without brackets"),
    ("[127.0.0.1]:80", "brackets around an IPv4 address"),
    ("[::1]", "not an address"),
    ("[fe80::1%eth0]:80", "IPv6 scope"),
    ("", "not an IP:PORT address"),
]


@pytest.mark.parametrize("text, what", REFUSED)
def test_refused_everywhere_with_the_same_reason(text, what):
    with pytest.raises(AddressError) as parsed:
        address.parse(text)
    assert what in parsed.value.args[0]
    with pytest.raises(MessageError) as order:
        Order.from_json({"type": "ADD_BACKEND", "data": {"app_id": "a", "backend_id": "b", "address": text}})
    assert what in str(order.value) and str(order.value).startswith(
        'ADD_BACKEND: data.address: expected "IP:PORT"')
    with pytest.raises(cli.CliError) as ctl:  # sozuctl refuses it before sending anything
        cli._validated(cli.build(cli.docopt.docopt(cli.__doc__, ["backend", "add", "-i", "a",
                                                                  "--backend-id=b", f"--address={text}"])).request)
    assert what in str(ctl.value)


@given(st.ip_addresses(), st.integers(1, 65535))
def test_every_numeric_address_round_trips(ip, port):
    text = f"[{ip.exploded}]:{port:05d}" if ip.version == 6 else f"{ip}:{port}"
    normal = address.parse(text)
    assert address.parse(normal) == normal
    assert address.split(normal) == (ipaddress.ip_address(str(ip)), port)
    order = Order.from_json({"type": "ADD_BACKEND", "data": {"app_id": "a", "backend_id": "b", "address": text}})
    assert order.data["address"] == normal
