"""Tests of issue 5: Alembic, importing the original Chrononaut's history, pruning and
the maintenance commands (a package so test module names may repeat other folders')."""
