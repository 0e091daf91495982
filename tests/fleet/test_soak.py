"""The bounded soak under faults (tests/fleet/soak.py) in a database of its own."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

#: Seconds the soak runs; ``CHRONONAUT_SOAK_SECONDS`` changes it (at most 120).
SECONDS = float(os.environ.get("CHRONONAUT_SOAK_SECONDS", "12"))


@pytest.fixture()
def soak_url(server_url: sa.URL) -> Iterator[str]:
    """A fresh database for the soak: its killer terminates every backend of it."""
    name = f"chrononaut_soak_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_soak_under_faults_loses_nothing(soak_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Threads and processes under a backend killer: lost = 0, history contiguous, no leftovers."""
    here = Path(__file__).parent
    sys.path.insert(0, str(here))
    try:
        import soak  # type: ignore[import-not-found]  # found through sys.path above
    finally:
        sys.path.remove(str(here))
    figures = soak.run(soak_url, SECONDS, threads=3, processes=2)
    with capsys.disabled():
        print(f"\nsoak figures: {json.dumps(figures)}")
    assert figures["problems"] == []
    assert figures["lost"] == 0
    assert figures["operations"] > 0 and figures["faults_injected"] > 0
