"""_devdb/oldest.py: the oldest stack pyproject.toml allows, as == pins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> list[str]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "_devdb" / "oldest.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def test_pins_are_the_floors() -> None:
    """The runtime floors of pyproject.toml come out as == pins."""
    pins = _pins()
    for pin in ("SQLAlchemy==2.0.16", "Flask-SQLAlchemy==3.1.0", "Flask-Login==0.6.3"):
        assert pin in pins
    assert "Flask==3.0" in pins and "Werkzeug==3.0.0" in pins


def test_every_pin_is_exact() -> None:
    """Every line pins one exact version; the linters are left out."""
    pins = _pins()
    assert pins and all("==" in pin and ">" not in pin for pin in pins)
    assert not any(pin.lower().startswith(("mypy", "ruff")) for pin in pins)
