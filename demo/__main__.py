"""Command line of the demo: ``python -m demo [--port N] [--smoke] [--reset]``."""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from collections.abc import Sequence

from demo.database import (
    DEMO_DATABASE,
    demo_database_url,
    normalize_url,
    server_description,
    server_url,
)
from demo.models import DEMO_USERS, db, seed


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description=(
            "Chrononaut demo: two users edit customer accounts; every change is kept in "
            "history with who, when and why."
        ),
    )
    parser.add_argument(
        "--port", type=int, default=5000, help="port to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--database-url",
        help=(
            "use exactly this database (default: database "
            f"{DEMO_DATABASE!r} on the server chrononaut.testing finds: DATABASE_URL, "
            "else 127.0.0.1:5432, else an embedded PostgreSQL)"
        ),
    )
    parser.add_argument(
        "--reset", action="store_true", help="drop the demo's tables and seed them again"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=(
            "run the scripted scenario through the test client in a fresh database "
            "(or in --database-url's, whose demo tables it drops afterwards) and exit "
            "non-zero on any failure"
        ),
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo server (or the smoke scenario); returns the exit status."""
    args = _parse_args(argv)
    if args.smoke:
        from demo.smoke import run_smoke

        url = (
            normalize_url(args.database_url).render_as_string(hide_password=False)
            if (args.database_url)
            else None
        )
        return 0 if run_smoke(url) else 1

    from werkzeug.serving import make_server

    from demo.app import create_app

    # Check the port before anything else, so a taken one is reported at once, with
    # the way out, instead of after the database set-up (or werkzeug's exit).
    problem = _port_problem(args.host, args.port)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    if args.database_url:
        url = normalize_url(args.database_url).render_as_string(hide_password=False)
        where = "the given database"
        server = None
    else:
        server = server_description()
        url, where = demo_database_url(server_url())
    app = create_app(url)
    with app.app_context():
        if args.reset:
            db.drop_all()
        db.create_all()
        created = seed()
    shown = normalize_url(url).render_as_string(hide_password=True)
    try:
        # Binds now: the messages below are printed once the address really serves.
        http = make_server(args.host, args.port, app, threaded=True)
    except (OSError, SystemExit):
        print(_port_hint(args.port), file=sys.stderr)
        return 1
    if server is not None:
        print(f"Server: {server}.")
    print(f"Chrononaut demo: data in {where} ({shown}){', freshly seeded' if created else ''}.")
    print(f"Open http://{args.host}:{http.server_port}/ and log in as:")
    for login in DEMO_USERS:
        print(f"    user {login.username!r:8} password {login.password!r}")
    print("Log in as both (e.g. one in a private window) and edit the same account to see")
    print("history and conflicts. Press Ctrl-C to stop.")
    sys.stdout.flush()
    try:
        http.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        http.server_close()
        with app.app_context():
            for engine in db.engines.values():
                engine.dispose()
    print("Demo stopped.")
    return 0


def _port_hint(port: int) -> str:
    return (
        f"Port {port} is in use by another program: stop it, or choose another port, "
        f"e.g. `python3 dev.py demo --port {port + 1}`."
    )


def _port_problem(host: str, port: int) -> str | None:
    """A message when ``host:port`` cannot be listened on, else ``None``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"Cannot listen on {host}: {exc}; check --host."
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the web server will: a port in TIME_WAIT after the last run is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return _port_hint(port)
            return f"Cannot listen on {host}:{port}: {exc.strerror}; try another --host or --port."
    return None


if __name__ == "__main__":
    sys.exit(main())
