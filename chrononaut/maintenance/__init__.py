"""Operating Chrononaut on existing databases: importing the original Chrononaut's
activity log, pruning history, reading a record's timeline.

Each module has a Python API; :mod:`chrononaut.maintenance.cli` wraps them as
``flask chrononaut import-activity``, ``prune`` and ``history``.
"""
