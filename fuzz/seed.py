"""Writes the seed inputs of fuzz/corpus/ from the test corpora and the repository's examples.

    python fuzz/seed.py

Files are named by the SHA-1 of their content, as libFuzzer names what it finds, so running it
again adds nothing twice. Crash cases found later live beside the seeds, under the same names.
"""
from __future__ import annotations

import glob
import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from sozu import config as config_module  # noqa: E402
from sozu import proxy_protocol as pp  # noqa: E402
from sozu.messages import Request, dump_orders, encode  # noqa: E402


def requests() -> list[bytes]:
    return [Path(p).read_bytes() for p in sorted(glob.glob(str(ROOT / "tests/http/requests/*/*.http")))]


def chunked_bodies() -> list[bytes]:
    bodies = []
    for data in requests():
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep and b"chunked" in head.lower() and body:
            bodies += [b"\xff" + body, b"\x02" + body]  # whole, then in 3-byte pieces
    return bodies


def responses() -> list[bytes]:
    heads = [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
             b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
             b"HTTP/1.0 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
             b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
             b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
             b"HTTP/1.1 302 Found\r\nLocation: /x\r\nSet-Cookie: a=b\r\nContent-Length: 0\r\n\r\n",
             b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until close"]
    return [bytes([i]) + head for i, head in enumerate(heads)]


def proxy_headers() -> list[bytes]:
    v4 = (("192.0.2.1", 56324), ("198.51.100.7", 443))
    v6 = (("2001:db8::1", 1), ("2001:db8::2", 65535))
    return [pp.encode_v1(*v4), pp.encode_v1(*v6), pp.encode_v1(None, None),
            pp.encode_v2(*v4), pp.encode_v2(*v6), pp.encode_v2(None, None, local=True),
            pp.encode_v2(*v4, tlvs=((0x01, b"h2"), (0x02, b"example.com"))),
            pp.encode_v1(*v4) + b"GET / HTTP/1.1\r\n"]


def configs() -> list[bytes]:
    example = (ROOT / "conf/config.toml").read_bytes()
    small = b'command_socket = "s.sock"\n[[listeners]]\nprotocol = "http"\naddress = "127.0.0.1:80"\n'
    tcp = small + (b'[applications.t]\nprotocol = "tcp"\nfrontends = [{ address = "127.0.0.1:80" }]\n'
                   b'backends = ["127.0.0.1:9000", { address = "127.0.0.1:9001", weight = 2 }]\n')
    return [example, small, tcp, small + b'sandbox = { seccomp = true, seccomp_action = "eperm" }\n']


def commands() -> list[bytes]:
    orders = config_module.parse((ROOT / "conf/config.toml").read_text(), str(ROOT / "conf/config.toml")).to_orders()
    listing = encode({"id": "1", "version": 0, "type": "LIST_WORKERS"})
    status = encode(Request("2", "PROXY", orders[0]).to_json())
    return [dump_orders(orders), listing + status, listing[:-1], b'{"id": "x"}\0\0{]\0']


def main() -> None:
    seeds = {"http_request": requests(), "chunked": chunked_bodies(), "http_response": responses(),
             "proxy_protocol": proxy_headers(), "config": configs(), "command": commands()}
    for target, inputs in seeds.items():
        directory = HERE / "corpus" / target
        directory.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
        print(f"{target}: {len(list(directory.iterdir()))} inputs")


if __name__ == "__main__":
    main()
