"""sozu's own parser against llhttp (httptools), on what matters for the choice between them:
strictness on the request corpus (tests/http/requests) and parse rate of a typical head.

    python bench/llhttp_compare.py      (needs httptools installed; one core)

For each corpus case: does llhttp accept it (the head and any body parsed, no error), and does
that agree with the corpus' expected outcome? An invalid case llhttp accepts is one where llhttp
is more lenient than the contract (DESIGN.md §6) and the proxy would need its own check on top;
a valid case llhttp rejects is one where it is stricter than the contract.
"""
import glob
import os
import sys
import timeit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import httptools  # noqa: E402

from bench.parser_bench import REQUEST, RESPONSE  # noqa: E402
from sozu.http.parser import parse_request_head, parse_response_head  # noqa: E402

CORPUS = os.path.join(ROOT, "tests", "http", "requests")


class Collect:
    """The least a proxy needs from llhttp's callbacks: the target and the header pairs."""

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


def rate(stmt, number: int) -> float:
    return number / min(timeit.repeat(stmt, number=number, repeat=5))


def llhttp_request():
    parser = httptools.HttpRequestParser(Collect())
    parser.feed_data(REQUEST)
    return parser


def llhttp_response():
    parser = httptools.HttpResponseParser(Collect())
    parser.feed_data(RESPONSE)
    return parser


def speed() -> None:
    buf, rbuf = bytearray(REQUEST), bytearray(RESPONSE)
    print(f"request head  ({len(REQUEST)} bytes): sozu {rate(lambda: parse_request_head(buf), 50000):,.0f}/s, "
          f"llhttp {rate(llhttp_request, 50000):,.0f}/s (header pairs only, before any of sozu's checks)")
    print(f"response head ({len(RESPONSE)} bytes): sozu {rate(lambda: parse_response_head(rbuf, b'GET'), 50000):,.0f}/s, "
          f"llhttp {rate(llhttp_response, 50000):,.0f}/s")


if __name__ == "__main__":
    strictness()
    speed()
