"""sozu's parser (sozu.http.parser: llhttp and sozu's own checks on top) against llhttp alone
(httptools), on what matters for the design: strictness on the request corpus
(tests/http/requests), the parse rate of a typical head, and of a chunked body.

    .venv/bin/python bench/llhttp_compare.py      (one core)

For each corpus case: does llhttp alone accept it (the head and any body parsed, no error), and
does that agree with the corpus' expected outcome? An invalid case llhttp accepts is one where
llhttp is more lenient than the contract (tests/http/requests) and sozu checks on top of it; a valid
case llhttp rejects is one where it is stricter than the contract, and sozu's parser decides by
the contract's grammar (the theory of operation of sozu.http.parser). tests/http/test_corpus.py
checks that sozu's parser gives every case its expected outcome.
"""
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import httptools  # noqa: E402

from bench.parser_bench import CHUNKED, REQUEST, RESPONSE, rate  # noqa: E402
from sozu.http.parser import ChunkedFramer, parse_request_head, parse_response_head  # noqa: E402

CORPUS = os.path.join(ROOT, "tests", "http", "requests")


class Collect:
    """The least a proxy needs from llhttp's callbacks: the target and the header pairs. (The
    callbacks it does not use are named too: httptools looks each one up when a parser is made,
    and a miss costs an AttributeError.)"""

    on_message_begin = on_status = on_body = on_chunk_header = on_chunk_complete = None

    def __init__(self):
        self.headers = []
        self.url = b""
        self.head_done = self.done = False

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_headers_complete(self):
        self.head_done = True

    def on_message_complete(self):
        self.done = True


def llhttp_accepts(data: bytes) -> bool:
    collect = Collect()
    parser = httptools.HttpRequestParser(collect)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return collect.head_done
    except httptools.HttpParserError:
        return False
    return collect.done


def strictness() -> None:
    lenient, stricter = [], []
    for kind in ("valid", "invalid"):
        for path in sorted(glob.glob(os.path.join(CORPUS, kind, "*.http"))):
            with open(path, "rb") as f:
                data = f.read()
            accepted = llhttp_accepts(data)
            name = os.path.relpath(path, CORPUS)
            if kind == "invalid" and accepted:
                with open(path[:-5] + ".expect", encoding="utf-8") as f:
                    reason = next((line.split("=", 1)[1].strip() for line in f if line.startswith("reason=")), "?")
                lenient.append(f"{name} ({reason})")
            elif kind == "valid" and not accepted:
                stricter.append(name)
    total = len(glob.glob(os.path.join(CORPUS, "*", "*.http")))
    print(f"corpus: {total} cases")
    print(f"invalid cases llhttp accepts (more lenient than the contract): {len(lenient)}")
    for line in lenient:
        print("  ", line)
    print(f"valid cases llhttp rejects (stricter than the contract): {len(stricter)}")
    for line in stricter:
        print("  ", line)


def llhttp_request():
    parser = httptools.HttpRequestParser(Collect())
    parser.feed_data(REQUEST)
    return parser


def llhttp_response():
    parser = httptools.HttpResponseParser(Collect())
    parser.feed_data(RESPONSE)
    return parser


CHUNKED_REQUEST = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


class Body(Collect):
    """llhttp decoding a chunked body: its data handed over piece by piece (copied into bytes)."""

    def __init__(self):
        super().__init__()
        self.pieces = []

    def on_body(self, data):
        self.pieces.append(data)


def llhttp_chunked(protocol) -> None:
    parser = httptools.HttpRequestParser(protocol)
    parser.feed_data(CHUNKED_REQUEST)
    parser.feed_data(CHUNKED)
    assert protocol.done


def speed() -> None:
    buf, rbuf = bytearray(REQUEST), bytearray(RESPONSE)
    print(f"request head  ({len(REQUEST)} bytes): sozu {rate(lambda: parse_request_head(buf), 50000):,.0f}/s, "
          f"llhttp alone {rate(llhttp_request, 50000):,.0f}/s (header pairs only, none of sozu's checks)")
    print(f"response head ({len(RESPONSE)} bytes): sozu {rate(lambda: parse_response_head(rbuf, b'GET'), 50000):,.0f}/s, "
          f"llhttp alone {rate(llhttp_response, 50000):,.0f}/s")
    mb = len(CHUNKED) / 1e6

    def framer(spans):
        ChunkedFramer().feed(CHUNKED, spans)

    print(f"chunked body  ({len(CHUNKED)} bytes, 4 KiB chunks): ChunkedFramer {rate(lambda: framer(None), 2000) * mb:,.0f} MB/s "
          f"checked, {rate(lambda: framer([]), 2000) * mb:,.0f} MB/s with the data spans; llhttp "
          f"{rate(lambda: llhttp_chunked(Collect()), 2000) * mb:,.0f} MB/s checked (with its head), "
          f"{rate(lambda: llhttp_chunked(Body()), 2000) * mb:,.0f} MB/s with the data copied out")


if __name__ == "__main__":
    strictness()
    speed()
