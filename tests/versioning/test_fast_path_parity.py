"""The one-statement path is observably identical to the general one (issue 8).

The whole versioning suite runs once more in a subprocess with the one-statement
path off; only the tests that assert that path's own statement shapes are left out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.versioning.conftest import NO_FAST_PATH_ENV

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    bool(os.environ.get(NO_FAST_PATH_ENV)), reason="already the run without the fast path"
)
def test_versioning_suite_passes_without_fast_path() -> None:
    """Every versioning test passes with all flushes on the general path."""
    env = dict(os.environ, **{NO_FAST_PATH_ENV: "1"})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "-m",
            "not fast_path",
            str(ROOT / "tests" / "versioning"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
