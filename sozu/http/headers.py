"""The heads sozu forwards: what it removes, rewrites and adds (pure).

Header lines that are only forwarded are copied as they came, byte for byte: the lines to remove
or rewrite are found by one search and cut out, the others are not split and rebuilt. The heads
the search does not cover take a line-by-line pass, which sends a name as received and a value
as the parser stripped it: a Connection header naming other headers, a request whose headers a
front edited, several Content-Length values, a request to a sticky application (sozu's cookie
is taken out of Cookie). Only three kinds of work are done on the way:
  - hop-by-hop headers (RFC 9110 §7.6.1), the headers a Connection header names, and every
    `Proxy`/`Proxy-*` header (httpoxy) are removed;
  - the headers sozu owns (X-Forwarded-Proto/Port, Sozu-Id, Expect) are replaced by its own, so
    a client cannot spoof them; X-Forwarded-For and Forwarded get the client appended;
  - the message's framing is made explicit for the next hop (one Content-Length; Connection).
Transfer-Encoding is hop-by-hop too, but sozu forwards chunked bodies as they are, so the header
that describes them stays; except to an HTTP/1.0 client, which knows no chunks (RFC 9112 §6.1):
it gets the body decoded, delimited by the end of the connection.
"""
from __future__ import annotations

import re

HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"te", b"trailer", b"upgrade"))
# Headers sozu sets itself; a client's copy would be a spoof. Expect: sozu answers 100 Continue.
OWN_HEADERS = frozenset((b"x-forwarded-proto", b"x-forwarded-port", b"sozu-id", b"expect"))
REQUEST_DROP = HOP_BY_HOP | OWN_HEADERS
RESPONSE_DROP = HOP_BY_HOP | {b"sozu-id"}
# Request headers whose value sozu rewrites rather than forwards (Content-Length: the parser
# accepts identical duplicates; the backend gets one, as some refuse two).
REWRITTEN = frozenset((b"x-forwarded-for", b"forwarded", b"cookie", b"content-length"))
# Never dropped because a Connection header names them: they frame the message.
FRAMING = frozenset((b"content-length", b"transfer-encoding", b"host"))
# Connection tokens that name no header to drop besides the hop-by-hop ones.
PLAIN_TOKENS = frozenset((b"close", b"keep-alive"))
# The one upgrade proxied (RFC 6455). Any other would turn the connection into a tunnel that
# no route, rule or limit sees (h2c: HTTP/2 straight to the backend, RFC 7540 §3.2): such a
# request goes to the backend as a plain one, without Upgrade and its Connection token.
UPGRADES = frozenset((b"websocket",))


def _lines_named(names, proxy: bytes) -> re.Pattern:
    """The search for the lines with one of these names or starting with `proxy`, each found
    with the LF before it (a block is searched with an LF put in front)."""
    alternatives = b"|".join(re.escape(name) for name in sorted(names))
    return re.compile(rb"\n(?:%s|%s[^:]*):[^\n]*" % (alternatives, re.escape(proxy)), re.I)


_RESPONSE_DROP_LINES = _lines_named(RESPONSE_DROP, b"proxy-")
# A request's: those it drops, and the forwarding chains, which go out with the client appended.
CHAINS = (b"x-forwarded-for", b"forwarded")
_REQUEST_DROP_LINES = _lines_named(REQUEST_DROP.union(CHAINS), b"proxy")
# The lines of a request whose values sozu reads before forwarding it.
_REQUEST_READ_LINES = re.compile(rb"\n(x-forwarded-for|forwarded|content-length):([^\r]*)", re.I)


def forwarded_upgrade(head) -> bytes | None:
    """The protocol of the request's Upgrade header (a lower-case list) that goes to the
    backend, or None: then neither does the header, and a 101 answer is the backend's error."""
    if head.upgrade is None:
        return None
    for protocol in head.upgrade.split(b","):
        protocol = protocol.strip(b" \t")
        if protocol in UPGRADES:
            return protocol
    return None


def request_head(head, client_ip: bytes, origin, request_id: bytes,
                 sticky_name: bytes | None = None) -> bytes:
    """The head sent to the backend. `origin` is where the request entered sozu: its `scheme`,
    `port` and `by` (the worker's ListenerInfo precomputes them). `sticky_name`: the sticky
    cookie to strip from Cookie (for sticky applications only; for others the cookie may be
    the application's own)."""
    target = head.target if head.target[:1] == b"/" else origin_form(head.target)
    lines = [head.method, b" ", target, b" ", head.version, b"\r\n"]
    chains = request_fields_searched(head, sticky_name)
    if chains is not None:
        fields, forwarded_for, forwarded = chains
        lines.append(fields)
    else:
        forwarded_for, forwarded = request_fields_without(head, sticky_name, lines)
    ipv6 = b":" in client_ip
    element = (b"proto=" + origin.scheme + b";for=" + (b'"[' + client_ip + b']"' if ipv6 else client_ip) +
               b";by=" + origin.by)
    lines += (b"X-Forwarded-For: ", forwarded_for + b", " + client_ip if forwarded_for else client_ip,
              b"\r\nForwarded: ", forwarded + b", " + element if forwarded else element,
              b"\r\nX-Forwarded-Proto: ", origin.scheme,
              b"\r\nX-Forwarded-Port: ", origin.port,
              b"\r\nSozu-Id: ", request_id, b"\r\n")
    upgrade = forwarded_upgrade(head)
    if upgrade is not None:
        lines.append(b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n")
    elif head.version == b"HTTP/1.0":
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def request_fields_searched(head, sticky_name: bytes | None):
    """The request's field lines to forward, cut out by one search, and the X-Forwarded-For and
    Forwarded chains it had (joined, or None): (fields, forwarded_for, forwarded). None when
    the search does not cover the head: request_fields_without() then makes the lines."""
    fields = head.fields
    if fields is None or sticky_name is not None or not head.connection_tokens <= PLAIN_TOKENS:
        return None
    block = b"\n" + fields
    forwarded_for = forwarded = length = None
    for name, value in _REQUEST_READ_LINES.findall(block):
        value = value.strip(b" \t")
        name = name.lower()
        if name == b"content-length":
            # Content-Length goes as it came when it is one line with the plain length; the
            # backend gets one plain value for "5, 5" or two lines (some refuse those).
            if length is not None or value != b"%d" % head.content_length:
                return None
            length = value
        elif name == b"x-forwarded-for":
            forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
        else:
            forwarded = value if forwarded is None else forwarded + b", " + value
    return _REQUEST_DROP_LINES.sub(b"", block)[1:], forwarded_for, forwarded


def request_fields_without(head, sticky_name: bytes | None, lines: list):
    """The line-by-line pass of request_head: the field lines to forward appended to lines, each
    made from its (name, value) pair; -> (forwarded_for, forwarded), the chains it had."""
    tokens = head.connection_tokens
    drop = REQUEST_DROP.union(tokens - FRAMING) if tokens else REQUEST_DROP
    forwarded_for = forwarded = None
    length_sent = False
    for name, value in head.headers:
        lname = name.lower()
        if lname in drop or lname.startswith(b"proxy"):
            continue
        if lname in REWRITTEN:
            if lname == b"content-length":
                if length_sent:
                    continue
                length_sent = True
                value = b"%d" % head.content_length  # "5, 5" is one length too
            elif lname == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
                continue
            elif lname == b"forwarded":
                forwarded = value if forwarded is None else forwarded + b", " + value
                continue
            elif sticky_name is not None:  # the sticky cookie is sozu's, not the application's
                value = strip_cookie(value, sticky_name)
                if not value:
                    continue
        lines += (name, b": ", value, b"\r\n")
    return forwarded_for, forwarded


def response_head(response, request_id: bytes, keep_alive: bool, http10: bool,
                  set_cookie: bytes | None = None, upgrade: bool = False,
                  dechunked: bool = False) -> bytes:
    """The head sent to the client. Its field lines go out as they came, less the ones dropped.
    dechunked: the chunked body goes out decoded, so without its Transfer-Encoding."""
    tokens = response.connection_tokens
    if upgrade or dechunked or not tokens <= PLAIN_TOKENS:  # the rare case: a line-by-line pass
        drop = RESPONSE_DROP.union(tokens - FRAMING) if tokens else RESPONSE_DROP
        if upgrade:
            drop = drop - {b"upgrade"}
        if dechunked:
            drop = drop | {b"transfer-encoding"}
        fields = response_fields_without(response.headers, drop)
    else:
        fields = response_fields_searched(response.fields)
    # An intermediary sends its own HTTP version (RFC 9110 §6.2), whatever the backend's.
    lines = [b"HTTP/1.1 %d " % response.status, response.reason, b"\r\n", fields,
             b"Sozu-Id: ", request_id, b"\r\n"]
    if set_cookie:
        lines += (b"Set-Cookie: ", set_cookie, b"\r\n")
    if upgrade:
        lines.append(b"Connection: Upgrade\r\n")
    elif not keep_alive:
        lines.append(b"Connection: close\r\n")
    elif http10:
        lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def response_fields_without(headers, drop) -> bytes:
    """The field lines of [(name, value)] whose names are neither in drop nor Proxy-*."""
    lines = []
    for name, value in headers:
        lname = name.lower()
        if lname in drop or lname.startswith(b"proxy-"):
            continue
        lines += (name, b": ", value, b"\r\n")
    return b"".join(lines)


def response_fields_searched(fields: bytes) -> bytes:
    """response_fields_without(RESPONSE_DROP) for validated field lines, by one search for the
    lines to drop: the lines kept are not split and rebuilt."""
    return _RESPONSE_DROP_LINES.sub(b"", b"\n" + fields)[1:]


def sticky_cookie(head, sticky_name: bytes) -> str | None:
    """The value of the sticky cookie the client sent, if any."""
    prefix = sticky_name + b"="
    for name, value in head.headers:
        if name.lower() == b"cookie":
            for part in value.split(b";"):
                part = part.strip()
                if part.startswith(prefix):
                    return part[len(prefix):].decode("latin-1")
    return None


def strip_cookie(value: bytes, name: bytes) -> bytes:
    """A Cookie header value without the cookie `name`."""
    prefix = name + b"="
    if prefix not in value:
        return value
    return b"; ".join(part for part in (p.strip() for p in value.split(b";"))
                      if part and not part.startswith(prefix))


def origin_form(target: bytes) -> bytes:
    """`http://host/p?q` -> `/p?q` (many backends do not understand the absolute form)."""
    if target[:1] == b"/" or target == b"*":
        return target
    start = target.find(b"/", target.find(b"//") + 2)
    if start < 0:  # no path: `http://host` or `http://host?q`
        query = target.find(b"?")
        return b"/" if query < 0 else b"/" + target[query:]
    return target[start:]
