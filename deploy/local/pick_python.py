"""Print the CPython the project's environment should be built on: the fastest 3.11 here.

CPython builds differ in speed. On our machines the distribution's ``/usr/bin/python3.11``
(Debian builds it with profile-guided and link-time optimisation) runs pure-Python code 1.2 to
1.6 times as fast as the ``python3`` first on PATH (pyenv's plain ``./configure`` build). The
meters worker's main thread is pure Python and bounds its reports per second, so the choice
shows in its throughput (``make bench``; the README's meters section has the figures). uv takes
the first 3.11 it finds; the Makefile runs this once per machine, keeps the answer in its tools
folder (delete ``python-choice`` there to choose again) and gives it to uv as ``UV_PYTHON``.

Candidates: every ``python3`` and ``python3.11`` on PATH and in /usr/bin and /usr/local/bin,
each interpreter once (a pyenv shim counts as the interpreter it runs), of version 3.11. Each
times the same small loop of dict, tuple and string work, five times in a process, in three
rounds taken in turns (the machine has slow spells of a second or two); the lowest time wins.
Runs on any Python 3; prints the interpreter's real path.
"""

from __future__ import annotations

import os
import subprocess
import sys

NAMES = ("python3.11", "python3")
EXTRA_DIRS = ("/usr/bin", "/usr/local/bin")
ROUNDS = 3
PROBE = """
import os, sys, time
if sys.version_info[:2] != (3, 11) or sys.implementation.name != "cpython":
    print("skip"); raise SystemExit
def work():
    d = {}
    for i in range(300000):
        d[i % 1000] = (i, str(i))
    return d
times = []
for _ in range(5):
    started = time.perf_counter()
    work()
    times.append(time.perf_counter() - started)
print(os.path.realpath(sys.executable), min(times))
"""


def candidates() -> list[str]:
    dirs = os.environ.get("PATH", "").split(os.pathsep) + list(EXTRA_DIRS)
    found: dict[str, str] = {}
    for folder in dirs:
        for name in NAMES:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                found.setdefault(os.path.realpath(path), path)
    return list(found.values())


def timing(path: str) -> tuple[str, float] | None:
    """The interpreter behind ``path`` (a pyenv shim runs another) and its time, or None when
    it is not a working CPython 3.11."""
    try:
        out = subprocess.run(
            [path, "-I", "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
        ).stdout.split()
        return out[0], float(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def main() -> int:
    best: dict[str, float] = {}
    paths = candidates()
    for _ in range(ROUNDS):  # in turns: a slow spell of the machine does not pick for it
        for path in paths:
            timed = timing(path)
            if timed is None:
                paths = [p for p in paths if p != path]
                continue
            real, seconds = timed
            best[real] = min(seconds, best.get(real, seconds))
    if not best:
        print("no CPython 3.11 found on PATH or in /usr/bin: install one", file=sys.stderr)
        return 1
    ranked = sorted(best.items(), key=lambda item: item[1])
    for real, seconds in ranked:
        print(f"python {real}: {seconds * 1000:.0f} ms", file=sys.stderr)
    print(ranked[0][0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
