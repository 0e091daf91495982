"""Print the oldest stack pyproject.toml allows, as ``==`` pins for pip.

Run as a script (``python3 _devdb/oldest.py``) by the oldest-stack step of
``.ci/run``; standard library only. Each ``>=X`` floor of the runtime
dependencies, of the ``psycopg`` extra and of the test tools becomes ``==X``, plus
the floors of what those pull in where the resolver would otherwise pick newer
releases (Werkzeug for Flask 3.0).

Where a floor release has no wheel for the running Python (psycopg2-binary 2.9.0
predates CPython 3.10), the pin is the oldest release of that series with one,
from the table below: the step then proves the oldest stack that installs here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What the resolver would otherwise take newer than its dependents' floors.
_TRANSITIVE = {"Werkzeug": "3.0.0"}  # Flask 3.0.0 requires Werkzeug>=3.0.0

# package -> {(major, minor) of Python: oldest release with a binary wheel for it}
_WHEEL_FLOORS: dict[str, dict[tuple[int, int], str]] = {
    "psycopg2-binary": {(3, 10): "2.9.2", (3, 11): "2.9.5", (3, 12): "2.9.9", (3, 13): "2.9.10"},
    "psycopg": {(3, 11): "3.1.4", (3, 12): "3.1.12", (3, 13): "3.2.2"},
}

# Tools the main step runs; the suite does not need them.
_SKIP = {"mypy", "ruff"}

_FLOOR = re.compile(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)$")


def _requirements() -> list[str]:
    """Dependency strings of [project] dependencies and the extras we need."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    # A tiny reader for the two arrays we need: tomllib is 3.11+ and this must
    # run on the oldest Python we support.
    found: list[str] = []
    for header in ("dependencies", "psycopg", "test"):
        match = re.search(rf"^{header}\s*=\s*\[(.*?)\]\s*$", text, re.MULTILINE | re.DOTALL)
        if match is None:
            raise SystemExit(f"pyproject.toml has no {header} array")
        found.extend(re.findall(r'"([^"]+)"', match.group(1)))
    return found


def pins() -> list[str]:
    """The ``name==version`` lines."""
    python = sys.version_info[:2]
    out: dict[str, str] = {}
    for requirement in _requirements():
        match = _FLOOR.match(requirement.strip())
        if match is None:
            continue  # "chrononaut[psycopg]" and other self-references
        name, extras, version = match.group(1), match.group(2) or "", match.group(3)
        base = name.lower()
        if base in _SKIP:
            continue
        table = _WHEEL_FLOORS.get(base, {})
        if python in table and _key(table[python]) > _key(version):
            version = table[python]
        out[name] = f"{name}{extras}=={version}"
    for name, version in _TRANSITIVE.items():
        out.setdefault(name, f"{name}=={version}")
    return list(out.values())


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


if __name__ == "__main__":
    print("\n".join(pins()))
