"""Start a real PgBouncer in front of the test server (the fleet tests import it).

PgBouncer refuses to run as root, so as root it runs as the ``postgres`` user;
its config, auth file, log and pid file live in a temporary directory of its own
(the Debian service and its ``/etc/pgbouncer`` are never touched). It listens on
a free local port; two databases point at the test run's database: the test
database's own name in ``pool_mode = transaction`` and ``<name>_stmt`` in
``pool_mode = statement``.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

#: Where Debian's package puts the binary (not on a non-root PATH).
_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def find_binary() -> str | None:
    """The PgBouncer executable, or ``None`` when it is not installed."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    for candidate in _CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def version(binary: str) -> tuple[int, int]:
    """``(major, minor)`` of the installed PgBouncer."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)", out)
    if match is None:  # pragma: no cover - every release prints it
        raise RuntimeError(f"cannot read the PgBouncer version from {out!r}")
    return int(match.group(1)), int(match.group(2))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Bouncer:
    """A running PgBouncer: URLs of its two pool modes and how to stop it."""

    process: subprocess.Popen[bytes]
    directory: Path
    port: int
    transaction_url: sa.URL
    statement_url: sa.URL
    version: tuple[int, int]

    def log(self) -> str:
        """The PgBouncer log so far (for failure messages)."""
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop PgBouncer and remove its directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def start(binary: str, server: sa.URL, *, pool_size: int = 4) -> Bouncer:
    """Start PgBouncer in front of ``server`` (a URL of the test run's database).

    :param pool_size: server connections per database and user (small, so that
        server sessions are really shared between clients).
    """
    directory = Path(tempfile.mkdtemp(prefix="chrononaut-pgbouncer-"))
    port = _free_port()
    database = server.database or "postgres"
    user = server.username or "postgres"
    host = server.host or "127.0.0.1"
    server_port = server.port or 5432
    target = f"host={host} port={server_port} dbname={database}"
    (directory / "userlist.txt").write_text(f'"{user}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"{database} = {target}",
                f"{database}_stmt = {target} pool_mode=statement",
                "",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {directory / 'userlist.txt'}",
                "pool_mode = transaction",
                f"default_pool_size = {pool_size}",
                "max_client_conn = 200",
                "server_reset_query =",
                "ignore_startup_parameters = extra_float_digits,options",
                f"logfile = {directory / 'pgbouncer.log'}",
                f"pidfile = {directory / 'pgbouncer.pid'}",
                "",
            ]
        )
    )
    run_as: str | None = None
    if os.geteuid() == 0:
        run_as = "postgres"
        entry = pwd.getpwnam(run_as)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
        for child in directory.iterdir():
            os.chown(child, entry.pw_uid, entry.pw_gid)
    process = subprocess.Popen(
        [binary, str(directory / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        user=run_as,
        start_new_session=True,
    )
    base = server.set(host="127.0.0.1", port=port)
    bouncer = Bouncer(
        process,
        directory,
        port,
        base,
        base.set(database=f"{database}_stmt"),
        version(binary),
    )
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            log = bouncer.log()
            bouncer.stop()
            raise RuntimeError(f"PgBouncer exited at start:\n{log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                log = bouncer.log()
                bouncer.stop()
                raise RuntimeError(f"PgBouncer did not listen on port {port}:\n{log}") from None
            time.sleep(0.05)
    return bouncer


def driver_url(url: sa.URL, driver: str) -> sa.URL:
    """``url`` for ``driver`` (``"psycopg2"`` or ``"psycopg"``)."""
    return url.set(drivername=f"postgresql+{driver}")


def connect_args(driver: str, bouncer_version: tuple[int, int]) -> dict[str, object]:
    """What a driver needs behind this PgBouncer.

    psycopg 3 prepares a statement after 5 executions; PgBouncer < 1.21 can't
    follow prepared statements across server connections (and 1.21+ only with
    ``max_prepared_statements`` > 0, which this config does not set), so they
    are turned off.
    """
    if driver == "psycopg":
        return {"prepare_threshold": None}
    return {}
