"""Version history: history tables, the ``Versioned`` mixin and its history
classes, capture of changes, change_info and the read API.

The public names are those of ``__all__`` (also exported by :mod:`chrononaut`);
the modules of this package are private.
"""

from __future__ import annotations

from chrononaut.versioning._as_of import as_of
from chrononaut.versioning._change_info import append_change_info
from chrononaut.versioning._model import Versioned, history_class

__all__ = ["Versioned", "append_change_info", "as_of", "history_class"]
