"""Parse rate of sozu.http.parser on a typical browser request head (one core, CPU time).

    .venv/bin/python bench/parser_bench.py
"""

import os
import sys
import time
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sozu.http.parser import ChunkedFramer, parse_request_head, parse_response_head  # noqa: E402

REQUEST = (
    b"GET /articles/2024/http-desync?page=2&sort=new HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=4f2a9c; theme=dark\r\n"
    b"\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nDate: Mon, 27 Jul 2009 12:28:53 GMT\r\nServer: demo\r\n"
    b"Content-Type: text/html; charset=utf-8\r\nContent-Length: 1234\r\n\r\n"
)
CHUNKED = b"".join(b"%x\r\n%s\r\n" % (n, b"x" * n) for n in (4096,) * 16) + b"0\r\n\r\n"


def rate(stmt, number: int) -> float:
    """Calls per second of stmt: the best of many short runs, in the process's CPU time, so that
    other jobs on a shared machine (which preempt this one) count as little as they can."""
    best = min(timeit.repeat(stmt, number=500, repeat=max(number // 500, 40), timer=time.process_time))
    return 500 / best


def main() -> None:
    buf = bytearray(REQUEST)
    heads = rate(lambda: parse_request_head(buf), 50000)
    print(f"request head  ({len(REQUEST)} bytes): {heads:,.0f} heads/s")
    print(f"response head ({len(RESPONSE)} bytes): "
          f"{rate(lambda: parse_response_head(RESPONSE, b'GET'), 50000):,.0f} heads/s")

    def framer():
        ChunkedFramer().feed(CHUNKED)

    mb = len(CHUNKED) / 1e6
    print(f"chunked body  ({len(CHUNKED)} bytes, 4 KiB): {rate(framer, 2000) * mb:,.0f} MB/s")


if __name__ == "__main__":
    main()
