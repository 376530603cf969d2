"""What a matched frontend does to a request and its response (pure): redirects, rewrites of the
host and path, header edits (docs/routing.md).

The router hands the session a `Route` (sozu.router), whose rules were checked by the order
schema and compiled when the order was applied. The session asks three questions of it:

  - `redirect(route, head, https)`: the whole answer to send, when the front redirects; the
    request never reaches a backend;
  - `forwarded(route, head)`: the request head as the backend must see it: the path rewritten
    (prefix stripped, then the regex substitution), the Host header replaced, the request
    header edits applied; the very same head when the front has none of them;
  - `edit_response(route, head_bytes)`: the response head sent to the client, with the
    response header edits applied (only to backend responses, not to sozu's own answers).

Header edits apply in the order given: REMOVE drops every line of that name, SET drops them and
adds one, ADD adds one. Names that frame the message or concern one hop were refused when the
order was applied, so an edit can never make a message ambiguous.
"""
from __future__ import annotations

import dataclasses

from sozu.http import answers
from sozu.http.headers import origin_form

def redirect(route, head, https: bool) -> bytes:
    """The redirect answer (`route.redirect` set): the request's URL with the parts the
    redirect replaces; path and host as the front's rewrite makes them, when it has one."""
    spec = route.redirect
    scheme = spec["scheme"] or ("https" if https else "http")
    request_host, request_port = _host_and_port(head)
    rewrite = route.rewrite
    host = spec["host"] or (rewrite and rewrite["host"]) or request_host
    if spec["port"] is not None:
        host = _without_port(host) + f":{spec['port']}"
    elif host is request_host and spec["scheme"] is None and request_port:
        host += ":" + request_port  # the same origin: the same port
    path, query = _path_and_query(head)
    if rewrite is not None:
        path = rewrite_path(route, path)
    if spec["path"] is not None:
        path = spec["path"].encode("ascii")
    if spec["query"] is not None:
        query = spec["query"].encode("ascii")
    location = f"{scheme}://{host}".encode("ascii") + path + (b"?" + query if query else b"")
    return answers.redirect_answer(location, spec["status"])


def forwarded(route, head):
    """The head to send to the backend; `head` itself when the front changes nothing."""
    rewrite, edits = route.rewrite, route.request_headers
    if rewrite is None and not edits:
        return head
    fields = headers = head.headers
    target, host = head.target, head.host
    if rewrite is not None:
        path, query = _path_and_query(head)
        path = rewrite_path(route, path)
        target = path + (b"?" + query if query else b"")
        if rewrite["host"] is not None:
            host = _without_port(rewrite["host"])
            value = rewrite["host"].encode("ascii")
            fields = [(name, value if name.lower() == b"host" else v) for name, v in fields]
            if not any(name.lower() == b"host" for name, _ in fields):  # HTTP/1.0 without Host
                fields.append((b"Host", value))
    if edits:
        fields = apply_edits(list(fields), edits)
    path = target.partition(b"?")[0]
    if fields is headers:  # the lines as received still hold
        return dataclasses.replace(head, target=target, host=host, path=path)
    return dataclasses.replace(head, target=target, host=host, path=path, fields=None, edited_headers=fields)


def rewrite_path(route, path: bytes) -> bytes:
    """strip_prefix, then the regex substitution (first match, with its groups); the result
    always starts with "/"."""
    rewrite = route.rewrite
    prefix = rewrite["strip_prefix"]
    if prefix is not None and path.startswith(prefix.encode("ascii")):
        path = path[len(prefix):]
    if route.rewrite_regex is not None:
        path = route.rewrite_regex.sub(rewrite["path_replacement"].encode("utf-8"), path, count=1)
    return path if path[:1] == b"/" else b"/" + path


def apply_edits(fields: list, edits) -> list:
    """[(name, value)] with the edits (action, name, lower-case name, value) applied in order."""
    for action, name, lname, value in edits:
        if action != "ADD":
            fields = [field for field in fields if field[0].lower() != lname]
        if action != "REMOVE":
            fields.append((name, value))
    return fields


def edit_response(route, head: bytes) -> bytes:
    """A response head (status line, field lines, empty line) with the front's response
    header edits applied; the same bytes when it has none."""
    edits = route.response_headers
    if not edits:
        return head
    status, _, block = head[:-4].partition(b"\r\n")
    fields = [tuple(line.split(b":", 1)) for line in block.split(b"\r\n") if line]
    fields = [(name, value.strip()) for name, value in fields]
    lines = [status] + [name + b": " + value for name, value in apply_edits(fields, edits)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _path_and_query(head) -> tuple[bytes, bytes | None]:
    path, mark, query = origin_form(head.target).partition(b"?")
    return path, query if mark else None


def _host_and_port(head) -> tuple[str, str]:
    """The request's host (lower case) and the port its Host header named, if any."""
    for name, value in head.headers:
        if name.lower() == b"host":
            host, colon, port = value.decode("ascii", "replace").rpartition(":")
            if colon and port.isdigit() and not host.endswith(":"):  # not inside [v6]
                return head.host, port
            break
    return head.host, ""


def _without_port(host: str) -> str:
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() and not name.endswith(":") else host
