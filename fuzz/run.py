"""Coverage-guided fuzzing of fuzz/targets.py with atheris (libFuzzer), one process per target.

    python fuzz/run.py [--seconds N] [TARGET ...]      (default: every target, 3 s each)

Each target starts from its corpus, fuzz/corpus/<target>/ (kept in the repository: seeds from
the test corpora, and every crash ever found, once fixed). New interesting inputs go to a
scratch directory, not into the repository. A crash (any exception but the parser's own error,
or a broken length promise) stops that target; libFuzzer writes the input to
fuzz/crashes/<target>-crash-<sha1>, which this script names: fix the bug, then move the file
into fuzz/corpus/<target>/. Exits 1 when any target crashed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def fuzz_one(target: str, seconds: int, scratch: str) -> None:
    """In the child: atheris over one target, with libFuzzer's own arguments."""
    import atheris
    sys.path.insert(0, str(ROOT))  # the sozu package of this checkout
    with atheris.instrument_imports(include=["sozu"]):
        import targets  # noqa: F401 - imports the parsers under instrumentation
    function = targets.TARGETS[target]
    crashes = HERE / "crashes"
    crashes.mkdir(exist_ok=True)
    argv = [sys.argv[0], scratch, str(HERE / "corpus" / target), f"-max_total_time={seconds}",
            "-timeout=10", "-rss_limit_mb=1024", "-max_len=65536", "-print_final_stats=1",
            f"-artifact_prefix={crashes}/{target}-"]
    atheris.Setup(argv, function)
    atheris.Fuzz()


def _stat(lines: list[str], name: str) -> str:
    return next((line.split(":")[-1].strip() for line in lines if line.startswith(f"stat::{name}")), "?")


def main() -> int:
    sys.path.insert(0, str(HERE))
    if sys.argv[1:2] == ["--child"]:  # before anything imports the parsers uninstrumented
        _, _, target, _, seconds, _, scratch = sys.argv
        fuzz_one(target, int(seconds), scratch)
        return 0
    from targets import TARGETS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=3, help="time per target (default 3)")
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], default=[],
                        help="targets to fuzz (default: all)")
    args = parser.parse_args()
    crashed = []
    for target in args.targets or list(TARGETS):
        with tempfile.TemporaryDirectory(prefix=f"sozu-fuzz-{target}-") as scratch:
            done = subprocess.run([sys.executable, __file__, "--child", target, "--seconds",
                                   str(args.seconds), "--scratch", scratch],
                                  capture_output=True, text=True)
        lines = done.stdout.splitlines() + done.stderr.splitlines()  # atheris: traceback on stdout
        runs = _stat(lines, "number_of_executed_units")
        found = _stat(lines, "new_units_added")
        if done.returncode != 0:
            crashed.append(target)
            print(f"fuzz {target}: CRASH after {runs} runs")
            start = next((i for i, line in enumerate(lines) if "Uncaught Python exception" in line),
                         max(0, len(lines) - 40))
            print("\n".join(lines[start:]))
        else:
            print(f"fuzz {target}: {runs} runs in {args.seconds} s, {found} new coverage inputs, no crash")
    if crashed:
        print(f"crashes in {', '.join(crashed)}: inputs in {HERE / 'crashes'}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
