"""Run the raw-request corpus tests/http/requests/{valid,invalid}/NNN.http against the parser.

Each case is one message: a head and, when it announces one, its body. A valid case must parse
to the fields of its NNN.expect and use the whole file; an invalid case must fail (in the head,
or in the chunked body behind a valid head) with the expected status and reason.
"""

import glob
import os

import pytest

from sozu.http.parser import ChunkedFramer, ProtocolError, parse_request_head

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requests")


def cases(kind: str) -> list[str]:
    return sorted(glob.glob(os.path.join(CORPUS, kind, "*.http")))


def read_expect(http_path: str) -> dict[str, str]:
    expect = {}
    with open(http_path[: -len(".http")] + ".expect", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                expect[key] = value
    return expect


def run(data: bytes) -> tuple:
    """Parse one message; -> (head, head size, body size)."""
    result = parse_request_head(data)
    assert result is not None, "head incomplete"
    head, n = result
    if not head.chunked:
        return head, n, len(data) - n
    framer = ChunkedFramer()
    used = framer.feed(data[n:])
    assert framer.done, "chunked body incomplete"
    return head, n, used


def field(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def case_id(path: str) -> str:
    return os.path.relpath(path, CORPUS)


def test_corpus_size():
    assert len(cases("valid")) >= 20 and len(cases("invalid")) >= 40


@pytest.mark.parametrize("path", cases("valid"), ids=case_id)
def test_valid(path):
    with open(path, "rb") as f:
        data = f.read()
    expect = read_expect(path)
    head, n, body = run(data)
    assert n + body == len(data), "the message must use the whole file"
    for key, value in expect.items():
        if key == "headers":
            assert len(head.headers) == int(value)
        elif key == "body":
            assert body == int(value)
        else:
            assert field(getattr(head, key)) == value, key
    if head.content_length is not None:
        assert body == head.content_length


@pytest.mark.parametrize("path", cases("invalid"), ids=case_id)
def test_invalid(path):
    with open(path, "rb") as f:
        data = f.read()
    expect = read_expect(path)
    assert {"status", "reason", "ref"} <= expect.keys(), "an invalid case names its rule"
    with pytest.raises(ProtocolError) as info:
        run(data)
    assert info.value.status_hint == int(expect["status"])
    assert expect["reason"].lower() in info.value.message.lower()


def run_byte_by_byte(data: bytes) -> None:
    """What the proxy session does when the client sends one byte per segment."""
    buf = bytearray()
    framer = None
    for i in range(len(data)):
        byte = data[i : i + 1]
        if framer is not None:
            assert framer.feed(byte) == 1 and not framer.done
            continue
        buf += byte
        result = parse_request_head(buf)
        if result is not None:
            assert result[1] == len(buf)
            if result[0].chunked:
                framer = ChunkedFramer()


@pytest.mark.parametrize("path", cases("invalid"), ids=case_id)
def test_invalid_byte_by_byte_same_status(path):
    with open(path, "rb") as f:
        data = f.read()
    expect = read_expect(path)
    with pytest.raises(ProtocolError) as info:
        run_byte_by_byte(data)
    assert info.value.status_hint == int(expect["status"])
    # the reason may be less precise: a partial line says less about its fault
