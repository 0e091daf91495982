#!/usr/bin/env python3
"""Developer entry point: set up a virtualenv and run the demo or the checks.

Needs nothing but Python 3.10+ (standard library only)::

    python3 dev.py demo [ARGS...]    # run the demo app (ARGS go to `python -m demo`)
    python3 dev.py test [ARGS...]    # pytest (ARGS go to pytest), then ruff, mypy, docs
    python3 dev.py pytest [ARGS...]  # only pytest
    python3 dev.py check             # only ruff, mypy and the Sphinx build
    python3 dev.py docs              # only the Sphinx build (docs/_build/html)
    python3 dev.py install           # only create/update the virtualenv

The virtualenv lives in ``.venv``. The project is installed into it in editable
mode with the extras a command needs, and installed again only when
``pyproject.toml`` changed (a stamp file in ``.venv`` records its hash).

Every step runs even if an earlier one failed; the exit status is non-zero if any
step failed (pytest's "no tests collected", status 5, included).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import venv
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".chrononaut-dev-stamp.json"
GET_PIP = "https://bootstrap.pypa.io/get-pip.py"

# Extras per command. `test` also installs `demo` because tests/demo exercises the
# demo app; `demo` and `docs` are subsets, so a venv set up by `test` serves all.
EXTRAS = {
    "demo": ("demo",),
    "test": ("test", "docs", "demo"),
    "docs": ("docs",),
}


def say(message: str) -> None:
    print(f"dev.py: {message}", file=sys.stderr, flush=True)


def venv_python() -> Path:
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def run(argv: Sequence[str | Path]) -> int:
    """Run a command in the project root; return its exit status."""
    try:
        return subprocess.call([str(a) for a in argv], cwd=ROOT)
    except FileNotFoundError as exc:
        say(f"cannot run {argv[0]}: {exc}")
        return 127


def create_venv() -> None:
    """Create .venv with pip, also where the system Python ships without ensurepip."""
    say(f"creating virtualenv in {VENV}")
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        return
    except (subprocess.CalledProcessError, OSError) as exc:
        # Debian/Ubuntu split ensurepip into python3-venv; fall back to get-pip.
        say(f"venv with pip failed ({exc}); bootstrapping pip from {GET_PIP}")
    venv.EnvBuilder(with_pip=False, clear=True).create(VENV)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "get-pip.py"
        with urllib.request.urlopen(GET_PIP, timeout=60) as response:
            script.write_bytes(response.read())
        if run([venv_python(), script, "--quiet"]) != 0:
            raise SystemExit("dev.py: could not install pip into .venv")


def ensure_pip() -> None:
    """Add pip to a venv made without it (e.g. by uv) instead of recreating it."""
    if run([venv_python(), "-c", "import pip"]) == 0:
        return
    say("installing pip into .venv")
    if run([venv_python(), "-m", "ensurepip", "--upgrade"]) != 0:
        raise SystemExit("dev.py: .venv has no pip and ensurepip failed; remove .venv and retry")


def venv_usable() -> bool:
    python = venv_python()
    if not python.exists():
        return False
    # A venv copied from elsewhere or whose base Python was removed cannot start.
    probe = subprocess.run(
        [str(python), "-c", "import sys; print(sys.version_info >= (3, 10))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.returncode == 0 and probe.stdout.strip() == "True"


def project_hash() -> str:
    digest = hashlib.sha256()
    digest.update((ROOT / "pyproject.toml").read_bytes())
    return digest.hexdigest()


def installed_extras() -> set[str]:
    """Extras installed for the current pyproject.toml (none if it changed)."""
    try:
        data = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(data, dict) or data.get("hash") != project_hash():
        return set()
    return {str(extra) for extra in data.get("extras", [])}


def ensure_env(command: str) -> Path:
    """Make sure .venv exists with the extras ``command`` needs; return its python."""
    if not venv_usable():
        if VENV.exists():
            say(".venv is not usable; recreating it")
            shutil.rmtree(VENV)
        create_venv()
    wanted = set(EXTRAS[command])
    installed = installed_extras()
    if not wanted <= installed:
        ensure_pip()
        extras = sorted(wanted | installed)
        spec = f".[{','.join(extras)}]"
        say(
            f"installing {spec} into .venv (first run, or pyproject.toml changed); "
            "this takes a minute or two"
        )
        # pip's own output (one line per package) is the progress report.
        status = run(
            [
                venv_python(),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--progress-bar",
                "on",
                "--editable",
                spec,
            ]
        )
        if status != 0:
            raise SystemExit(f"dev.py: pip install {spec} failed (exit status {status})")
        STAMP.write_text(json.dumps({"hash": project_hash(), "extras": extras}))
    return venv_python()


def cmd_demo(args: list[str]) -> int:
    python = ensure_env("demo")
    argv = [str(python), "-m", "demo", *args]
    if os.name == "posix":
        # Become the demo: signals (Ctrl-C, kill, CI timeouts) then reach the process
        # that owns the web server and the embedded PostgreSQL, not a wrapper.
        sys.stdout.flush()
        sys.stderr.flush()
        os.chdir(ROOT)
        os.execv(argv[0], argv)
    return run(argv)


def cmd_pytest(python: Path, args: list[str]) -> int:
    status = run([python, "-m", "pytest", *args])
    if status == 5:
        say("pytest collected no tests: counted as a failure")
    return status


def cmd_docs(python: Path) -> int:
    """Build the HTML docs warning-free into docs/_build/html."""
    argv = [python, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    status = run([*argv, "docs", "docs/_build/html"])
    if status == 0:
        say(f"docs built: {ROOT / 'docs' / '_build' / 'html' / 'index.html'}")
    return status


def cmd_check(python: Path) -> dict[str, int]:
    return {
        "ruff": run([python, "-m", "ruff", "check", "."]),
        "mypy": run([python, "-m", "mypy"]),  # files and --strict come from setup.cfg
        "sphinx": cmd_docs(python),
    }


def report(results: dict[str, int]) -> int:
    failed = [name for name, status in results.items() if status != 0]
    summary = ", ".join(
        f"{name} {'ok' if status == 0 else f'FAILED ({status})'}"
        for name, status in results.items()
    )
    say(summary)
    return 1 if failed else 0


USAGE = __doc__.split("::", 1)[1].split("The virtualenv", 1)[0].strip("\n")


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 10):  # noqa: UP036 -- users may run it with an old python3
        say("Python 3.10 or newer is required")
        return 2
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(f"usage: python3 dev.py COMMAND [ARGS...]\n{USAGE}")
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    try:
        if command == "demo":
            return cmd_demo(args)
        if command == "install":
            ensure_env("test")
            return 0
        if command == "docs":
            if args:
                say(f"`docs` takes no arguments (got {' '.join(args)})")
                return 2
            return cmd_docs(ensure_env("docs"))
        if command in {"test", "pytest", "check"}:
            python = ensure_env("test")
            results: dict[str, int] = {}
            if command != "check":
                results["pytest"] = cmd_pytest(python, args)
            if command != "pytest":
                if command == "check" and args:
                    say(f"`check` takes no arguments (got {' '.join(args)})")
                    return 2
                results.update(cmd_check(python))
            return report(results)
    except KeyboardInterrupt:
        return 130
    say(f"unknown command {command!r}; try `python3 dev.py --help`")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
