"""What the docs render: every object an ``.. auto*::`` directive of docs/*.rst
documents (shared by the public-API, public-boundary and docs tests)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs"


def resolve(name: str) -> Any:
    """The object a dotted name stands for (module attributes included)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def documented_objects() -> list[tuple[str, Any]]:
    """(full name, object) of everything an ``.. auto*::`` directive renders."""
    objects = []
    for page in sorted(DOCS.glob("*.rst")):
        module = "chrononaut"
        for line in page.read_text(encoding="utf-8").splitlines():
            current = re.match(r"^\.\. (?:current)?module:: ([\w.]+)", line)
            if current:
                module = current.group(1)
                continue
            auto = re.match(r"^\s*\.\. auto(\w+):: ([\w.]+)", line)
            if auto:
                kind, name = auto.groups()
                full = name if name.startswith("chrononaut") else f"{module}.{name}"
                if kind == "module":
                    module = full
                objects.append((full, resolve(full)))
    return objects
