"""Fixtures that start real processes and always stop them."""
from __future__ import annotations

import pytest

from tests.integration.harness import Backend, RawBackend, Sozu, free_port, http_config


@pytest.fixture
def backend():
    started = []

    def make(name: str = "b", **kwargs) -> Backend:
        b = Backend(name, **kwargs)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture(scope="module")
def backends():
    """Two backends, b1 and b2, shared by the tests of a module."""
    started = [Backend("b1"), Backend("b2")]
    yield started
    for b in started:
        b.stop()


@pytest.fixture
def sozu(tmp_path):
    """sozu(config_text) -> a started Sozu; stopped (and its process group killed) at the end."""
    started = []

    def make(config_text: str, wait: bool = True, name: str = "sozu", env=None) -> Sozu:
        s = Sozu(tmp_path, config_text, name)
        started.append(s)
        return s.start(wait=wait, env=env)

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def raw_proxy(tmp_path, sozu):
    """raw_proxy(respond) -> (port, raw): a one-worker sozu routing Host: localhost to a new
    RawBackend(respond); the backend is stopped at the end, then the proxy."""
    started = []

    def make(respond):
        raw = RawBackend(respond)
        started.append(raw)
        port = free_port()
        sozu(http_config(tmp_path, port, [raw.port], worker_count=1))
        return port, raw

    yield make
    for raw in started:
        raw.stop()


@pytest.fixture
def proxy(tmp_path, sozu, backend):
    """The common case: one backend, one http listener, routing Host: localhost to it."""
    b = backend("b1")
    port = free_port()
    s = sozu(http_config(tmp_path, port, [b.port]))
    s.port = port
    s.backends = [b]
    return s
