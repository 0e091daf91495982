"""The public API has a boundary a reader can see: public modules are the ones
listed in the API reference, every other module is underscore-private, and every
name a public module exports is documented."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.docs_index import documented_objects

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "chrononaut"
DOCS = ROOT / "docs"

#: The public modules, each listed in docs/api.rst.
PUBLIC_MODULES = [
    "chrononaut",
    "chrononaut.errors",
    "chrononaut.http",
    "chrononaut.lease_web",
    "chrononaut.locking",
    "chrononaut.maintenance",
    "chrononaut.retry",
    "chrononaut.testing",
    "chrononaut.versioning",
]


def _isort_style(name: str) -> tuple[int, str]:
    """Constants, then classes, then the rest (ruff's RUF022 order)."""
    if name.isupper():
        return 0, name
    return (1 if name[:1].isupper() else 2), name


def _modules() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.add(".".join(parts))
    return found


def test_every_module_is_public_or_private() -> None:
    """A module without an underscore in its dotted name is a listed public module."""
    public = {m for m in _modules() if not any(p.startswith("_") for p in m.split("."))}
    assert sorted(public) == sorted(PUBLIC_MODULES)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_module_in_api_reference(name: str) -> None:
    """Each public submodule has its own section in the API reference."""
    text = (DOCS / "api.rst").read_text(encoding="utf-8")
    assert name == "chrononaut" or f"``{name}``\n" in text


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_module_all_is_sorted_and_importable(name: str) -> None:
    """A public module's ``__all__`` is sorted, without private names, all importable."""
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported in (sorted(exported), sorted(exported, key=_isort_style))
    assert [n for n in exported if n.startswith("_")] == []
    for export in exported:
        assert getattr(module, export) is not None


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_names_are_documented(name: str) -> None:
    """Every name a public module exports is rendered somewhere in the docs."""
    module = importlib.import_module(name)
    documented = documented_objects()
    names = {full for full, _ in documented}
    ids = {id(obj) for _, obj in documented}
    missing = [
        export
        for export in module.__all__
        if f"{name}.{export}" not in names and id(getattr(module, export)) not in ids
    ]
    assert missing == []


def test_docs_render_no_private_module() -> None:
    """No page renders (or teaches importing) an underscore module."""
    offenders = []
    for page in sorted([*DOCS.glob("*.rst"), ROOT / "README.md"]):
        hidden = False
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(r"^\.\. doc-test: hidden", line.strip()) or "<!-- doc-test: hidden" in line:
                hidden = True
                continue
            if hidden and (line.startswith((" ", "\t")) or not line.strip()):
                continue  # setup and checks the page does not render
            hidden = False
            if re.search(r"\bchrononaut(\.\w+)*\._\w+", line):
                offenders.append(f"{page.name}:{number}: {line.strip()}")
    assert offenders == []
