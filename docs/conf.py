"""Sphinx configuration for the Chrononaut documentation.

Build with::

    .venv/bin/sphinx-build -W -b html docs docs/_build/html
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Autodoc imports the package from the checkout, so the docs describe the code
# next to them even when an older Chrononaut is installed in the environment.
sys.path.insert(0, str(ROOT))

# Autodoc inspects every attribute of the Versioned mixin, including the
# declared_attr that creates the ``version`` column; SQLAlchemy warns about that
# access on an unmapped class. It is harmless here and only clutters the output.
warnings.filterwarnings(
    "ignore", message="Unmanaged access of declarative attribute", module="sphinx"
)


def _project_version() -> str:
    """``chrononaut.__version__`` (the one place it is written), read without importing.

    Importing ``chrononaut`` here would turn any import problem into a crash of
    the whole configuration instead of a readable autodoc warning.
    """
    text = (ROOT / "chrononaut" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return match.group(1) if match else "unknown"


project = "Chrononaut"
author = "The Chrononaut authors"
copyright = "the Chrononaut authors"
release = _project_version()
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

# No intersphinx: the build must work offline and warning-free.

exclude_patterns = ["_build", "examples"]
templates_path: list[str] = []

default_role = "literal"
highlight_language = "python3"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Base classes are shown only where they matter to users (the errors, and
# SQLAlchemy for VersionedSQLAlchemy), not for internal mixins.
autodoc_default_options: dict[str, object] = {}

html_theme = "alabaster"
html_title = f"Chrononaut {release}"
html_theme_options = {
    "description": "Version history, optimistic concurrency and record locking "
    "for Flask-SQLAlchemy on PostgreSQL",
    "fixed_sidebar": True,
}
html_static_path: list[str] = []
