"""Every input of fuzz/corpus/<target>/ (seeds and the crashes found so far) replayed through its
fuzz target: each parser only answers or raises its own error. The coverage-guided run itself is
fuzz/run.py (`make fuzz`; a few seconds a target in `make test`)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
sys.path.insert(0, str(FUZZ))
from targets import TARGETS  # noqa: E402

CASES = sorted((target, path) for target in TARGETS for path in (FUZZ / "corpus" / target).iterdir())


def test_every_target_has_a_corpus():
    assert {target for target, _ in CASES} == set(TARGETS)


@pytest.mark.parametrize("target, path", CASES, ids=[f"{t}/{p.name[:12]}" for t, p in CASES])
def test_corpus_input(target, path):
    TARGETS[target](path.read_bytes())
