"""Stops the embedded PostgreSQL once the process that started it is gone.

Run by ``_embedded._start_watchdog`` as ``python _watchdog.py PGDATA LOCK_PATH``,
with stdin the read end of a pipe that the starting process holds open: EOF means
that process exited, however it happened. The server is then stopped unless
another live process still uses it. Standard library plus fasteners and psutil
(found through the PYTHONPATH the starter sets) only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def _alive(pid: int) -> bool:
    import psutil  # type: ignore[import-untyped,unused-ignore]

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def main(pgdata: str, lock_path: str) -> int:
    """Wait for EOF on stdin, then stop the server if no live process uses it."""
    sys.stdin.buffer.read()  # EOF: the process that started us has exited
    import fasteners  # type: ignore[import-untyped]

    with fasteners.InterProcessLock(lock_path):
        handles = os.path.join(pgdata, ".handle_pids.json")
        try:
            with open(handles) as f:
                pids = json.loads(f.read() or "[]")
        except (OSError, ValueError):
            pids = []
        live = [p for p in pids if isinstance(p, int) and _alive(p)]
        if live != pids:
            with open(handles, "w") as f:
                f.write(json.dumps(live))
        if live:
            return 0
        try:
            with open(os.path.join(pgdata, "postmaster.pid")) as f:
                postmaster = int(f.readline())
        except (OSError, ValueError):
            return 0
        if _alive(postmaster):
            os.kill(postmaster, signal.SIGINT)  # PostgreSQL's "fast" shutdown
            deadline = time.monotonic() + 30
            while _alive(postmaster) and time.monotonic() < deadline:
                time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
