"""Property tests of sozu.http.parser (hypothesis).

- nothing (random bytes, mutated valid messages) makes the parser raise anything but
  ProtocolError, and whatever it accepts matches an independent reference grammar;
- a generated valid request round-trips: its parsed fields are the generated ones;
- splitting a head or a chunked body anywhere gives the same result;
- the ChunkedFramer agrees with a naive reference decoder on where a body ends.
"""

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sozu.http.parser import (_CL, _CONN, _TE, ChunkedFramer, ProtocolError, _framing_fields, _split_fields,
                              parse_request_head, parse_response_head)

settings.register_profile(
    "sozu-parser", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FAST = settings.get_profile("sozu-parser")

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
RESERVED_NAMES = {"host", "content-length", "transfer-encoding", "connection", "expect",
                  "upgrade", "content_length", "transfer_encoding"}

# --- reference grammar, written independently of the parser's regexes ----------------------

_REF_TOKEN = "[" + re.escape(TCHAR) + "]+"
_REF_HEAD = re.compile(
    (r"(?:\r\n){0,8}%s [\x21-\x22\x24-\x7e]+ HTTP/1\.[01]\r\n(?:%s:[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
     % (_REF_TOKEN, _REF_TOKEN)).encode("latin-1")
)
_REF_SIZE_LINE = re.compile(
    (r"([0-9a-fA-F]{1,16})(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|\"(?:[^\"\\\x00-\x08\x0a-\x1f\x7f]"
     r"|\\[^\x00-\x08\x0a-\x1f\x7f])*\"))?)*\r\n" % (_REF_TOKEN, _REF_TOKEN)).encode("latin-1")
)
_REF_TRAILER = re.compile((r"%s:[\t\x20-\x7e\x80-\xff]*\r\n" % _REF_TOKEN).encode("latin-1"))


def reference_body_end(data: bytes) -> int | None:
    """End offset of the complete chunked body at the start of data, or None (invalid or
    incomplete). Naive: one chunk at a time, the data copied, no state machine."""
    pos = 0
    while True:
        m = _REF_SIZE_LINE.match(data, pos)
        if m is None:
            return None
        size = int(m.group(1), 16)
        pos = m.end()
        if size == 0:
            break
        if data[pos + size : pos + size + 2] != b"\r\n":
            return None
        pos += size + 2
    while not data.startswith(b"\r\n", pos):
        m = _REF_TRAILER.match(data, pos)
        if m is None:
            return None
        pos = m.end()
    return pos + 2


# --- generators -------------------------------------------------------------------------------

tokens = st.text(TCHAR, min_size=1, max_size=12)
header_names = tokens.filter(lambda name: name.lower() not in RESERVED_NAMES)
value_chars = st.sampled_from([bytes([b]) for b in [9, *range(0x20, 0x7F), *range(0x80, 0x100)]])
header_values = st.lists(value_chars, max_size=30).map(b"".join).map(lambda v: v.strip(b" \t"))
path_chars = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "#?")
paths = st.text(path_chars, max_size=20).map(lambda p: ("/" + p).encode())
queries = st.none() | st.text(path_chars + "?", max_size=20).map(str.encode)
labels = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1,
                 max_size=10)
hosts = st.lists(labels, min_size=1, max_size=4).map(".".join)
ports = st.none() | st.integers(0, 65535)


@st.composite
def requests(draw):
    """-> (raw bytes, expected fields, body)."""
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    method = draw(tokens).encode()
    if method == b"CONNECT":
        method = b"GET"
    path, query = draw(paths), draw(queries)
    target = path if query is None else path + b"?" + query
    host, port = draw(hosts), draw(ports)
    host_value = host.encode() if port is None else b"%s:%d" % (host.encode(), port)
    with_host = version == b"HTTP/1.1" or draw(st.booleans())
    headers = [(draw(header_names).encode(), draw(header_values))
               for _ in range(draw(st.integers(0, 8)))]
    if with_host:
        headers.insert(draw(st.integers(0, len(headers))), (b"Host", host_value))
    framing = draw(st.sampled_from(["none", "length", "chunked"] if version == b"HTTP/1.1"
                                   else ["none", "length"]))
    body = b""
    content_length = None
    if framing == "length":
        body = draw(st.binary(max_size=20))
        content_length = len(body)
        headers.append((b"Content-Length", b"%d" % content_length))
    elif framing == "chunked":
        body = draw(chunked_bodies())
        headers.append((b"Transfer-Encoding", b"chunked"))
    connection = draw(st.sampled_from([None, b"close", b"keep-alive"]))
    if connection is not None:
        headers.append((b"Connection", connection))
    ows = draw(st.sampled_from([b"", b" ", b"\t", b" \t "]))
    raw = b"%s %s %s\r\n" % (method, target, version)
    raw += b"".join(name + b":" + ows + value + ows + b"\r\n" for name, value in headers)
    raw += b"\r\n"
    keep_alive = connection != b"close" and (version == b"HTTP/1.1" or connection == b"keep-alive")
    expected = dict(
        method=method, target=target, version=version, headers=headers, path=path,
        host=host.lower() if with_host else "", content_length=content_length,
        chunked=framing == "chunked", keep_alive=keep_alive,
    )
    return raw, expected, body


@st.composite
def chunked_bodies(draw):
    chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=5))
    out = []
    for data in chunks:
        size = b"%x" % len(data)
        if draw(st.booleans()):
            size = size.upper()
        ext = draw(st.sampled_from([b"", b";a", b";a=b", b' ; n = "q \\" x"', b";x=1;y"]))
        out.append(size + ext + b"\r\n" + data + b"\r\n")
    out.append(b"0" + draw(st.sampled_from([b"", b";last"])) + b"\r\n")
    for _ in range(draw(st.integers(0, 2))):
        out.append(draw(header_names).encode() + b": " + draw(header_values) + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


MUTATION_BYTES = [b"\r", b"\n", b"\x00", b" ", b"\t", b":", b",", b";", b"0", b"\x0b", b"\xff",
                  b"#", b"_", b"-"]


@st.composite
def mutated(draw, valid):
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "replace"]))
        if not data:
            break
        # half of the time next to a separator, where parsers disagree
        marks = [j for j, byte in enumerate(data) if byte in b" :;\r\n"]
        if marks and draw(st.booleans()):
            i = min(draw(st.sampled_from(marks)) + draw(st.integers(-1, 1)), len(data) - 1)
            i = max(i, 0)
        else:
            i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[i:i] = draw(st.sampled_from(MUTATION_BYTES))
        elif op == "delete":
            del data[i]
        elif op == "truncate":
            del data[i:]
        else:
            data[i : i + 1] = draw(st.sampled_from(MUTATION_BYTES))
    return bytes(data)


def whole_request(draw_result) -> bytes:
    raw, _, body = draw_result
    return raw + body


valid_messages = requests().map(whole_request)

# --- robustness -------------------------------------------------------------------------------


def check_request(data: bytes) -> None:
    try:
        result = parse_request_head(data)
    except ProtocolError as error:
        assert error.status_hint in (400, 414, 431, 501, 505)
        return
    if result is not None:
        head, n = result
        assert _REF_HEAD.fullmatch(data[:n]), data[:n]
        assert 0 < n <= len(data)
        check_framing(head)
        if head.chunked:
            check_body(data[n:])


def check_framing(head) -> None:
    """An accepted head has one unambiguous framing and one Host (reference semantics)."""
    fields: dict[bytes, list[bytes]] = {}
    for name, value in head.headers:
        fields.setdefault(name.lower(), []).append(value)
    lengths = [item.strip(b" \t") for value in fields.get(b"content-length", [])
               for item in value.split(b",")]
    codings = [item.strip(b" \t").lower() for value in fields.get(b"transfer-encoding", [])
               for item in value.split(b",")]
    assert not (lengths and codings)
    assert not (set(fields) & {b"content_length", b"transfer_encoding"})
    if lengths:
        assert all(re.fullmatch(rb"[0-9]{1,18}", item) for item in lengths)
        assert {int(item) for item in lengths} == {head.content_length}
    else:
        assert head.content_length is None
    assert head.chunked == bool(codings)
    if codings:
        assert codings == [b"chunked"] and head.version == b"HTTP/1.1"
    hosts = fields.get(b"host", [])
    assert len(hosts) == 1 if head.version == b"HTTP/1.1" else len(hosts) <= 1
    assert b"#" not in head.target and head.method != b"CONNECT"


def check_body(data: bytes) -> None:
    framer = ChunkedFramer()
    try:
        used = framer.feed(data)
    except ProtocolError as error:
        assert error.status_hint == 400
        assert reference_body_end(data) is None
        return
    if framer.done:
        assert reference_body_end(data) == used
    else:
        assert used == len(data) and reference_body_end(data) is None


@FAST
@given(st.binary(max_size=200))
def test_random_bytes(data):
    check_request(data)
    check_body(data)
    try:
        parse_response_head(data, b"GET")
    except ProtocolError as error:
        assert error.status_hint == 502


@FAST
@given(st.sampled_from([b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n",
                        b"HTTP/1.1 200 OK\r\n", b"5\r\nhello\r\n"]),
       st.binary(max_size=100))
def test_random_bytes_after_a_valid_start(start, tail):
    check_request(start + tail)
    check_body(start + tail)
    try:
        parse_response_head(start + tail, b"HEAD")
    except ProtocolError as error:
        assert error.status_hint == 502


@FAST
@given(mutated(valid_messages))
def test_mutated_requests(data):
    check_request(data)


@FAST
@given(mutated(chunked_bodies()))
def test_mutated_chunked_bodies(data):
    check_body(data)


@FAST
@given(mutated(st.sampled_from([
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.0 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
])))
def test_mutated_responses(data):
    try:
        result = parse_response_head(data, b"GET")
    except ProtocolError as error:
        assert error.status_hint == 502
        return
    if result is not None:
        head, _ = result
        assert head.body in ("none", "length", "chunked", "close")
        assert head.chunked == (head.body == "chunked")
        assert head.keep_alive is False or head.body != "close"


# --- round trip and splitting --------------------------------------------------------------------


@FAST
@given(requests())
def test_valid_request_round_trips(generated):
    raw, expected, body = generated
    head, n = parse_request_head(raw + body)
    assert n == len(raw)
    for field, value in expected.items():
        assert getattr(head, field) == value, field
    if head.chunked:
        framer = ChunkedFramer()
        assert framer.feed(body + b"GET /next") == len(body) and framer.done


@FAST
@given(requests(), st.data())
def test_split_request_gives_same_result(generated, data):
    raw, _, body = generated
    message = raw + body
    whole = parse_request_head(message)
    cut = data.draw(st.integers(0, len(raw) - 1))
    assert parse_request_head(bytearray(message[:cut])) is None
    assert parse_request_head(bytearray(message)) == whole


@FAST
@given(chunked_bodies(), st.lists(st.integers(0, 400), max_size=6), st.binary(max_size=10))
def test_split_chunked_body_gives_same_result(body, cuts, after):
    stream = body + after
    points = sorted({min(c, len(stream)) for c in cuts} | {len(stream)})
    framer = ChunkedFramer()
    used = 0
    start = 0
    for point in points:
        piece = memoryview(stream)[start:point]
        taken = framer.feed(piece)
        assert taken <= len(piece)
        used += taken
        start = point
        if framer.done:
            break
    assert framer.done and used == len(body) == reference_body_end(stream)


def reference_decoded(body: bytes) -> bytes:
    """The chunk data of a valid chunked body. Naive: one chunk at a time."""
    data, pos = b"", 0
    while size := int(body[pos:body.index(b"\r\n", pos)].split(b";")[0], 16):
        start = body.index(b"\r\n", pos) + 2
        data += body[start:start + size]
        pos = start + size + 2
    return data


@FAST
@given(chunked_bodies(), st.lists(st.integers(0, 400), max_size=6))
def test_the_data_spans_of_a_split_chunked_body_are_its_decoded_data(body, cuts):
    points = sorted({min(c, len(body)) for c in cuts} | {len(body)})
    framer, decoded, start = ChunkedFramer(), [], 0
    for point in points:
        piece, spans = memoryview(body)[start:point], []
        framer.feed(piece, spans)
        decoded += [bytes(piece[begin:end]) for begin, end in spans]
        start = point
    assert framer.done and b"".join(decoded) == reference_decoded(body)


# --- every single-byte edit of representative messages (exhaustive, not sampled) --------------

SAMPLE_REQUEST = (
    b"POST /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nX-A: 1, 2\r\n"
    b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"
)
SAMPLE_CHUNKED = (
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'5;e="v"\r\nhello\r\n0\r\nT: x\r\n\r\n'
)
# one edit away from CL.CL, CL.TE, Content_Length, a second Host, HTTP/1.0 with TE...
SAMPLE_AMBIGUOUS = (
    b"PUT /x HTTP/1.1\r\nHost: a\r\nXHost: b\r\nContent-Length: 5\r\nContent-Length: 5\r\n"
    b"XTransfer-Encoding: chunked\r\nContent-Lengthy: 6\r\n\r\nhello"
)
SAMPLE_CHUNKED_10 = (
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encodinx: chunked\r\n"
    b"Xontent-Length: 5\r\n\r\n0\r\n\r\n"
)
SAMPLE_BODY = b'5;e="v"\r\nhello\r\nA;f=g\r\n0123456789\r\n0\r\nT: x\r\n\r\n'


def single_edits(data: bytes):
    for i in range(len(data) + 1):
        for byte in MUTATION_BYTES:
            yield data[:i] + byte + data[i:]
            if i < len(data):
                yield data[:i] + byte + data[i + 1 :]
        if i < len(data):
            yield data[:i] + data[i + 1 :]


def test_every_single_edit_of_requests():
    for sample in (SAMPLE_REQUEST, SAMPLE_CHUNKED, SAMPLE_AMBIGUOUS, SAMPLE_CHUNKED_10):
        for data in single_edits(sample):
            check_request(data)


def test_every_single_edit_of_a_chunked_body():
    for data in single_edits(SAMPLE_BODY):
        check_body(data)


# --- framing headers found by search, as a line-by-line reading finds them -------------------

framing_names = st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"Connection",
                                 b"connection", b"Transfer-Encoding", b"transfer-encoding",
                                 b"Content_Length", b"X-Content-Length", b"Content-Lengthy",
                                 b"Keep-Alive", b"Proxy-Foo", b"HOST", b"Host "])
framing_values = st.sampled_from([b"5", b" 5 ", b"close", b"keep-alive", b"chunked", b"", b"\t7"])
_REF_FIELDS = re.compile((r"(?:%s:[\t\x20-\x7e\x80-\xff]*\r\n)*" % _REF_TOKEN).encode("latin-1"))
LOOKALIKES = (b"content_length", b"transfer_encoding")


def line_by_line(block: bytes) -> tuple[list, list]:
    """Reference reading of valid field lines: the Content-Length, Transfer-Encoding and
    Connection values joined in order, and the Host values."""
    joined: dict[bytes, bytes] = {}
    hosts = []
    for line in block.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        name, value = name.lower(), value.strip(b" \t")
        if name == b"host":
            hosts.append(value)
        elif name in (b"content-length", b"transfer-encoding", b"connection"):
            joined[name] = value if name not in joined else joined[name] + b"," + value
    return [joined.get(name) for name in (b"content-length", b"transfer-encoding", b"connection")], hosts


@FAST
@given(st.lists(st.tuples(header_names.map(str.encode) | framing_names,
                          st.sampled_from([b":", b": ", b":\t", b":  "]),
                          header_values | framing_values), max_size=12))
def test_framing_headers_are_found_as_a_line_by_line_reading_finds_them(lines):
    """The headers the parser interprets are searched for in the head, not read line by line
    (a response's lines are forwarded as they came): the search must find what a line-by-line
    reading finds; a head the grammar refuses is refused."""
    block = b"".join(name + colon + value + b"\r\n" for name, colon, value in lines)
    head = b"HTTP/1.1 200 OK\r\n" + block + b"\r\n"
    if _REF_FIELDS.fullmatch(block) is None:
        try:
            parse_response_head(head, b"GET")
        except ProtocolError as error:
            assert error.status_hint == 502
            return
        raise AssertionError("a field line outside the grammar was accepted")
    if any(name.lower() in LOOKALIKES for name, _, _ in lines):
        try:
            _framing_fields(head, 502)
        except ProtocolError as error:
            assert error.status_hint == 502 and "imitates" in error.message
            return
        raise AssertionError("an underscore spelling of a framing header was accepted")
    found, hosts = _framing_fields(head, 502)
    assert ([found[key] for key in (_CL, _TE, _CONN)], hosts) == line_by_line(block)
    assert _split_fields(block) == [(name, value.strip(b" \t")) for name, _, value in lines]
