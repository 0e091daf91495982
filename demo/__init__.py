"""A small Flask app showing Chrononaut's version history: ``python -m demo``.

Two demo users log in, edit customer accounts with a reason for each change, and
read each account's history: who changed what, when and why. ``python -m demo
--smoke`` drives the same app through a scripted scenario and exits non-zero if
anything is wrong.
"""

from __future__ import annotations

from demo.app import create_app

__all__ = ["create_app"]
