"""Write the raw-request corpus: valid/NNN.http and invalid/NNN.http with NNN.expect beside each.

    .venv/bin/python tests/http/requests/generate.py

The .http files are raw bytes (CRLF, bare LF, NUL... exactly as listed here), which is why they
are generated rather than edited by hand. Add a case at the END of its list so numbers stay put.

Expectation format (NNN.expect), one `key=value` per line, `#` starts a comment line:
  invalid: status=CODE, reason=WORDS (case-insensitive substring of the error message),
           ref=WHERE the rule comes from, note=WHY when sozu is stricter than the RFC.
  valid:   any RequestHead field (method, target, version, host, path, content_length,
           chunked, keep_alive, expect_continue, upgrade; `none`, `true`, `false` spelled so),
           headers=N (field line count), body=N (bytes after the head, all of them the body;
           a chunked body must end exactly at the end of the file).
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))


def head(*lines: bytes) -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def get(*headers: bytes, line: bytes = b"GET / HTTP/1.1") -> bytes:
    return head(line, *headers)


def post(*headers: bytes, body: bytes = b"") -> bytes:
    return head(b"POST /submit HTTP/1.1", b"Host: example.com", *headers) + body


H = b"Host: example.com"
BROWSER = get(
    b"Host: www.example.com",
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    b"Accept-Language: en-US,en;q=0.5",
    b"Accept-Encoding: gzip, deflate, br",
    b"Connection: keep-alive",
    b"Cookie: session=4f2a9c; theme=dark",
    b"Upgrade-Insecure-Requests: 1",
    line=b"GET /articles/2024?page=2&sort=new HTTP/1.1",
)
CHUNKED_BODY = b"5;name=value\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Checksum: 42\r\n\r\n"

VALID = [
    (get(H), "method=GET target=/ version=HTTP/1.1 host=example.com path=/ content_length=none "
     "chunked=false keep_alive=true headers=1 body=0"),
    (BROWSER, "host=www.example.com path=/articles/2024 target=/articles/2024?page=2&sort=new "
     "keep_alive=true headers=8"),
    (post(b"Content-Type: text/plain", b"Content-Length: 11", body=b"hello world"),
     "method=POST content_length=11 chunked=false body=11"),
    (post(b"Transfer-Encoding: chunked", body=CHUNKED_BODY),
     f"chunked=true content_length=none body={len(CHUNKED_BODY)}"),
    (post(b"Content-Length: 3", b"Content-Length: 3", body=b"abc"), "content_length=3 body=3"),
    (post(b"Content-Length: 3, 3", body=b"abc"),
     "content_length=3 body=3\n# RFC 9110 §8.6: a list of identical values MAY be accepted"),
    (post(b"Transfer-Encoding:\tchunked", body=b"0\r\n\r\n"),
     "chunked=true body=5\n# HTAB is OWS (RFC 9110 §5.6.3): not an obfuscation"),
    (post(b"Transfer-Encoding: Chunked ", body=b"0\r\n\r\n"),
     "chunked=true body=5\n# transfer codings are case-insensitive (RFC 9112 §7)"),
    (get(line=b"GET /old HTTP/1.0"), "version=HTTP/1.0 host= keep_alive=false headers=0"),
    (get(b"Host: Example.com", b"Connection: Keep-Alive", line=b"GET / HTTP/1.0"),
     "version=HTTP/1.0 host=example.com keep_alive=true"),
    (get(H, line=b"OPTIONS * HTTP/1.1"), "method=OPTIONS target=* path=/"),
    (get(H, line=b"GET http://example.com/p?q=1 HTTP/1.1"),
     "target=http://example.com/p?q=1 host=example.com path=/p"),
    (get(b"Host: EXAMPLE.com:443", line=b"GET https://example.com/ HTTP/1.1"),
     "host=example.com path=/\n# the default port of the scheme is implied (RFC 9110 §4.2.2)"),
    (get(b"Host: [2001:db8::1]:8080"), "host=[2001:db8::1]"),
    (get(b"Host: 192.0.2.7:80"), "host=192.0.2.7"),
    (b"\r\n\r\n" + get(H), "method=GET body=0\n# leading empty lines are skipped (RFC 9112 §2.2)"),
    (get(H, b"X-Name: Ren\xc3\xa9 \xe9t\xe9", b"X-Empty:", b"X-Space:    padded   "),
     "headers=4\n# obs-text is allowed in field values (RFC 9110 §5.5)"),
    (get(H, b"Connection: Upgrade", b"Upgrade: WebSocket", b"Sec-WebSocket-Version: 13",
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", line=b"GET /chat HTTP/1.1"),
     "upgrade=websocket keep_alive=true"),
    (post(b"Expect: 100-continue", b"Content-Length: 2", body=b"ok"),
     "expect_continue=true content_length=2 body=2"),
    (get(H, b"Connection: close"), "keep_alive=false"),
    (get(H, line=b"PROPFIND /dav/ HTTP/1.1"), "method=PROPFIND path=/dav/"),
    (get(H, line=b"GET /a/b;p=1/c?x=[1]&y=|^{} HTTP/1.1"),
     "path=/a/b;p=1/c\n# browsers send these bytes raw; the target is only checked to be VCHAR"),
    (post(b"Transfer-Encoding: chunked", body=b"4\r\n\r\n\r\n\r\n0\r\n\r\n"),
     "chunked=true body=14\n# chunk data may contain CRLF; only sizes frame it"),
    (get(H, b"Content-Length: 0"), "content_length=0 body=0"),
]

BODY_ERROR_HEAD = head(b"POST /upload HTTP/1.1", H, b"Transfer-Encoding: chunked")

INVALID = [
    # (raw, expectations)
    # --- line endings (RFC 9112 §2.2)
    (b"GET / HTTP/1.1\nHost: example.com\n\n",
     "status=400 reason=bare LF ref=RFC 9112 §2.2\n"
     "note=§2.2 lets a recipient accept a bare LF; a proxy must not, its backend may disagree"),
    (b"GET / HTTP/1.1\r\nHost: example.com\r\nX: X\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     "status=400 reason=bare LF ref=RFC 9112 §2.2; Kettle, HTTP Desync Attacks (TE.TE)"),
    (b"GET / HTTP/1.1\r\nHost: example.com\r\nX: a\rTransfer-Encoding: chunked\r\n\r\n",
     "status=400 reason=bare CR ref=RFC 9112 §2.2 (a bare CR MUST be treated as invalid or SP)"),
    (b"GET / HTTP/1.1\rHost: example.com\r\n\r\n",
     "status=400 reason=bare CR ref=RFC 9112 §2.2"),
    (b"\nGET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
     "status=400 reason=bare LF ref=RFC 9112 §2.2 "
     "note=a recipient MAY take a lone LF as a line end; sozu skips only CRLF empty lines"),
    # --- request line (RFC 9112 §3)
    (b"GET /\r\n\r\n", "status=400 reason=HTTP/0.9 ref=RFC 9112 §2.3, Appendix C.1 "
     "note=HTTP/0.9 requests have no version and no headers: not supported"),
    (get(H, line=b"GET  / HTTP/1.1"), "status=400 reason=METHOD SP ref=RFC 9112 §3 "
     "note=§3 allows whitespace-tolerant parsing; we do not, a backend may split differently"),
    (get(H, line=b"GET\t/ HTTP/1.1"), "status=400 reason=single spaces ref=RFC 9112 §3"),
    (get(H, line=b"GET / HTTP/1.1 "), "status=400 reason=METHOD SP ref=RFC 9112 §3"),
    (get(H, line=b" GET / HTTP/1.1"), "status=400 reason=whitespace before ref=RFC 9112 §3"),
    (get(H, line=b"GET /a b HTTP/1.1"), "status=400 reason=METHOD SP ref=RFC 9112 §3.2"),
    (get(H, line=b"GET /caf\xc3\xa9 HTTP/1.1"),
     "status=400 reason=request target ref=RFC 9112 §3.2, RFC 3986 §2 (non-ASCII)"),
    (get(H, line=b"GET /a\x00b HTTP/1.1"), "status=400 reason=request target ref=RFC 9112 §3.2"),
    (get(H, line=b"GET /index.html#top HTTP/1.1"),
     "status=400 reason=fragment ref=RFC 9112 §3.2.1 (origin-form has no fragment)"),
    (get(H, line=b"GET * HTTP/1.1"), "status=400 reason=OPTIONS ref=RFC 9112 §3.2.4"),
    (get(H, line=b"CONNECT example.com:443 HTTP/1.1"), "status=400 reason=CONNECT ref=RFC 9112 §3.2.3 "
     "note=authority-form is for forward proxies; sozu is a reverse proxy"),
    (get(H, line=b"GET ftp://example.com/ HTTP/1.1"),
     "status=400 reason=origin-form ref=RFC 9112 §3.2.2 "
     "note=a valid absolute-URI, but not a scheme this HTTP server serves"),
    (get(H, line=b"GET http://user:pw@example.com/ HTTP/1.1"),
     "status=400 reason=userinfo ref=RFC 9110 §4.2.4 (userinfo MUST be treated as an error)"),
    (get(b"Host: internal.example", line=b"GET http://example.com/ HTTP/1.1"),
     "status=400 reason=does not match ref=RFC 9112 §3.2.2; Kettle, Cracking the lens "
     "note=an origin server ignores Host here; a proxy refuses so the backend cannot route elsewhere"),
    (get(H, line=b"GET / http/1.1"), "status=400 reason=version ref=RFC 9112 §2.3 (case-sensitive)"),
    (get(H, line=b"GET / HTTP/2.0"), "status=505 reason=version ref=RFC 9110 §15.6.6"),
    (get(H, line=b"GET / HTTP/1.2"), "status=505 reason=version ref=RFC 9112 §2.3 "
     "note=§2.3 says SHOULD process as HTTP/1.1; we refuse unknown versions"),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
     "status=400 reason=request line ref=TLS ClientHello sent to a plain HTTP listener"),
    (b"\r\n" * 9 + get(H), "status=400 reason=empty lines ref=RFC 9112 §2.2 "
     "note=at least one empty line SHOULD be ignored; more than 8 is garbage"),
    # --- field lines (RFC 9112 §5, RFC 9110 §5)
    (get(H, b"Transfer-Encoding : chunked", b"Content-Length: 5") + b"0\r\n\r\n",
     "status=400 reason=between header name and colon ref=RFC 9112 §5.1 (MUST 400); Kettle TE.TE"),
    (get(b"Host : example.com"), "status=400 reason=between header name and colon ref=RFC 9112 §5.1"),
    (get(b" Host: example.com"), "status=400 reason=before the first header ref=RFC 9112 §2.2"),
    (get(H, b"Content-Length: 5", b" Transfer-Encoding: chunked") + b"0\r\n\r\n",
     "status=400 reason=obs-fold ref=RFC 9112 §5.2; Kettle, HTTP Desync Attacks (space-prefixed TE)"),
    (get(H, b"X-Long: first", b"\tsecond"), "status=400 reason=obs-fold ref=RFC 9112 §5.2"),
    (get(H, b"X-Broken-Line"), "status=400 reason=without a colon ref=RFC 9112 §5"),
    (get(H, b": no-name"), "status=400 reason=empty header name ref=RFC 9110 §5.1"),
    (get(H, b"X/Y: a"), "status=400 reason=header name ref=RFC 9110 §5.1 (token)"),
    (get(H, "Tr\u00e2nsfer-Encoding: chunked".encode()),
     "status=400 reason=header name ref=RFC 9110 §5.1 (no obs-text in names)"),
    (get(H, b"X-Data: a\x00b"), "status=400 reason=0x00 ref=RFC 9110 §5.5 (NUL MUST be rejected or replaced)"),
    (get(H, b"Transfer-Encoding:\x0bchunked"),
     "status=400 reason=0x0b ref=RFC 9110 §5.5; Kettle TE.TE (vertical tab)"),
    (get(H, b"Transfer-Encoding: chunked\x0c"), "status=400 reason=0x0c ref=RFC 9110 §5.5"),
    # --- Content-Length (RFC 9110 §8.6, RFC 9112 §6.3)
    (post(b"Content-Length: +5", body=b"hello"),
     "status=400 reason=Content-Length ref=RFC 9110 §8.6 (1*DIGIT)"),
    (post(b"Content-Length: -1"), "status=400 reason=Content-Length ref=RFC 9110 §8.6"),
    (post(b"Content-Length: 0x5", body=b"hello"), "status=400 reason=Content-Length ref=RFC 9110 §8.6"),
    (post(b"Content-Length: 5 5", body=b"hello"), "status=400 reason=Content-Length ref=RFC 9110 §8.6"),
    (post(b"Content-Length: 5, 6", body=b"hello!"),
     "status=400 reason=conflicting ref=RFC 9112 §6.3 rule 5 (MUST 400)"),
    (post(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"),
     "status=400 reason=conflicting ref=RFC 9112 §6.3 rule 5; Kettle CL.CL"),
    (post(b"Content-Length: 99999999999999999999"),
     "status=400 reason=Content-Length ref=RFC 9110 §8.6 (guard against overflow) "
     "note=at most 18 digits"),
    (post(b"Content-Length:"), "status=400 reason=Content-Length ref=RFC 9110 §8.6"),
    (post("Content-Length: \u0665".encode(), body=b"hello"),
     "status=400 reason=Content-Length ref=RFC 9110 §8.6 (ASCII digits only)"),
    # --- Transfer-Encoding (RFC 9112 §6.1, §6.3)
    (post(b"Content-Length: 6", b"Transfer-Encoding: chunked", body=b"0\r\n\r\nG"),
     "status=400 reason=both ref=RFC 9112 §6.3 rule 3; Kettle CL.TE"),
    (post(b"Transfer-Encoding: chunked", b"Content-Length: 3", body=b"8\r\nSMUGGLED\r\n0\r\n\r\n"),
     "status=400 reason=both ref=RFC 9112 §6.3 rule 3; Kettle TE.CL"),
    (post(b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n"),
     "status=501 reason=unsupported ref=RFC 9112 §6.1 (unknown coding: 501); Kettle TE.TE "
     "note=§6.3 rule 4 (chunked not final) would also allow 400; either way refused and closed"),
    (post(b"Transfer-Encoding: xchunked", b"Content-Length: 4", body=b"0\r\n\r\n"),
     "status=400 reason=both ref=RFC 9112 §6.3 rule 3; Kettle TE.TE"),
    (post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: x", body=b"0\r\n\r\n"),
     "status=400 reason=final ref=RFC 9112 §6.3 rule 4 (chunked not final: MUST 400); Kettle TE.TE"),
    (post(b"Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n"),
     "status=400 reason=final ref=RFC 9112 §6.3 rule 4"),
    (post(b"Transfer-Encoding: identity", body=b"0\r\n\r\n"),
     "status=501 reason=unsupported ref=RFC 9112 §6.1 (identity is no longer a coding) "
     "note=§6.3 rule 4 (chunked not final) would also allow 400"),
    (post(b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
     "status=501 reason=unsupported ref=RFC 9112 §6.1 note=sozu forwards only plain chunked bodies"),
    (post(b"Transfer-Encoding: chunked, chunked", body=b"0\r\n\r\n"),
     "status=400 reason=more than once ref=RFC 9112 §6.1 (a sender MUST NOT chunk twice) "
     "note=refusing what no conforming sender produces"),
    (post(b'Transfer-Encoding: "chunked"', body=b"0\r\n\r\n"),
     "status=400 reason=malformed ref=RFC 9112 §7 (a coding is a token); Kettle TE.TE"),
    (post(b"Transfer-Encoding: chunked,", body=b"0\r\n\r\n"),
     "status=400 reason=malformed ref=RFC 9112 §6.1 "
     "note=RFC 9110 §5.6.1.2 ignores empty list elements; framing headers get no leniency"),
    (head(b"POST / HTTP/1.0", H, b"Transfer-Encoding: chunked") + b"0\r\n\r\n",
     "status=400 reason=HTTP/1.0 ref=RFC 9112 §6.1 (TE in HTTP/1.0 means faulty framing)"),
    (post(b"Transfer_Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n"),
     "status=400 reason=imitates ref=CGI/WSGI fold '_' into '-' "
     "note=a valid token per RFC 9110; refused because some backends read it as Transfer-Encoding"),
    # --- Host (RFC 9112 §3.2, RFC 9110 §7.2)
    (get(b"User-Agent: x"), "status=400 reason=without a Host ref=RFC 9112 §3.2 (MUST 400)"),
    (get(H, b"Host: evil.example"), "status=400 reason=several Host ref=RFC 9112 §3.2 (MUST 400)"),
    (get(b"Host: exa mple.com"), "status=400 reason=Host ref=RFC 9112 §3.2 (invalid value: MUST 400)"),
    (get(b"Host: example.com/admin"), "status=400 reason=Host ref=RFC 9110 §7.2"),
    (get(b"Host: user@example.com"), "status=400 reason=Host ref=RFC 9110 §7.2"),
    (get(b"Host: example.com:80:80"), "status=400 reason=Host ref=RFC 9110 §7.2"),
    (get(b"Host:"), "status=400 reason=Host ref=RFC 9112 §3.2 "
     "note=an empty Host is legal only for a target without authority; nothing to route on"),
    (get(b"Host: example.com:99999"), "status=400 reason=port ref=RFC 9110 §7.2 "
     "note=port = *DIGIT in the grammar; we also require 1-5 digits and <= 65535"),
    # --- limits (RFC 9112 §3, RFC 6585 §5)
    (get(H, line=b"GET /" + b"a" * 8200 + b" HTTP/1.1"),
     "status=414 reason=too long ref=RFC 9112 §3 (MUST 414 for a target too long to parse)"),
    (get(H, *[b"X-%d: v" % i for i in range(101)]),
     "status=431 reason=too many ref=RFC 6585 §5"),
    (get(H, b"Cookie: " + b"c" * 33000), "status=431 reason=too large ref=RFC 6585 §5"),
    # --- chunked body (RFC 9112 §7.1), after a valid head
    (BODY_ERROR_HEAD + b"+5\r\nhello\r\n0\r\n\r\n",
     "status=400 reason=chunk size ref=RFC 9112 §7.1 (chunk-size = 1*HEXDIG)"),
    (BODY_ERROR_HEAD + b"0x5\r\nhello\r\n0\r\n\r\n", "status=400 reason=chunk size ref=RFC 9112 §7.1"),
    (BODY_ERROR_HEAD + b"5 \r\nhello\r\n0\r\n\r\n",
     "status=400 reason=chunk size ref=RFC 9112 §7.1 (BWS only before ';')"),
    (BODY_ERROR_HEAD + b"\r\nhello\r\n0\r\n\r\n", "status=400 reason=chunk size ref=RFC 9112 §7.1"),
    (BODY_ERROR_HEAD + b"10000000000000005\r\nhello\r\n0\r\n\r\n",
     "status=400 reason=16 hex digits ref=RFC 9112 §7.1 (MUST anticipate overflow) "
     "note=sizes are limited to 16 hex digits (64 bits)"),
    (BODY_ERROR_HEAD + b"5;ext\nhello\r\n0\r\n\r\n",
     "status=400 reason=bare LF ref=RFC 9112 §7.1.1; Weikop, Funky chunks (LF in extensions)"),
    (BODY_ERROR_HEAD + b"5;a=b c\r\nhello\r\n0\r\n\r\n",
     "status=400 reason=extension ref=RFC 9112 §7.1.1"),
    (BODY_ERROR_HEAD + b"5\r\nhelloXX\r\n0\r\n\r\n",
     "status=400 reason=CRLF after chunk data ref=RFC 9112 §7.1; Funky chunks (chunk data length)"),
    (BODY_ERROR_HEAD + b"5\nhello\n0\n\n", "status=400 reason=bare LF ref=RFC 9112 §7.1"),
    (BODY_ERROR_HEAD + b"0\r\nX-Trailer : 1\r\n\r\n",
     "status=400 reason=colon ref=RFC 9112 §7.1.2, §5.1"),
    (BODY_ERROR_HEAD + b"0\r\nX-Trailer: 1\r\n folded\r\n\r\n",
     "status=400 reason=obs-fold ref=RFC 9112 §7.1.2, §5.2"),
]


def write(kind: str, cases) -> None:
    folder = os.path.join(HERE, kind)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.endswith((".http", ".expect")):
            os.remove(os.path.join(folder, name))
    for number, (raw, expect) in enumerate(cases, 1):
        with open(os.path.join(folder, f"{number:03d}.http"), "wb") as f:
            f.write(raw)
        with open(os.path.join(folder, f"{number:03d}.expect"), "w", encoding="utf-8") as f:
            f.write(format_expect(expect))


def format_expect(text: str) -> str:
    """'k=v k=v # comment' shorthand -> one key=value per line; values run to the next key."""
    lines = []
    for raw_line in text.split("\n"):
        if raw_line.startswith("#"):
            lines.append(raw_line)
            continue
        pieces = raw_line.split(" ")
        for piece in pieces:
            key = piece.split("=", 1)[0]
            if "=" in piece and key.isidentifier():
                lines.append(piece)
            else:
                lines[-1] += " " + piece
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    write("valid", VALID)
    write("invalid", INVALID)
    print(f"{len(VALID)} valid, {len(INVALID)} invalid cases written under {HERE}")
