"""SPEC §6/§7: ``chrononaut.__all__`` lists exactly the public names, all importable,
and the errors form the documented hierarchy."""

from __future__ import annotations

from typing import cast

import pytest
from sqlalchemy.orm.exc import StaleDataError

import chrononaut
from tests.docs_index import documented_objects

SPEC_NAMES = {
    "VersionedSQLAlchemy",
    "Versioned",
    "versioned_session",
    "history_class",
    "as_of",
    "extra_change_info",
    "append_change_info",
    "rationale",
    "acting_as",
    "suppress_versioning",
    "advisory_lock",
    "lock_all",
    "LockHolder",
    "Lease",
    "register_error_handlers",
    "ChrononautException",
    "HiddenAttributeError",
    "UntrackedAttributeError",
    "StaleWriteError",
    "ActivityImportError",
    "LockError",
    "LockNotAvailableError",
    "RecordLockedError",
    "LockTimeoutError",
    "DeadlockError",
    "RecordLeasedError",
}

#: (error, its parents) per SPEC §6.
HIERARCHY = [
    ("ChrononautException", (Exception,)),
    ("HiddenAttributeError", ("ChrononautException", AttributeError)),
    ("UntrackedAttributeError", ("ChrononautException", AttributeError)),
    ("StaleWriteError", ("ChrononautException", StaleDataError)),
    ("ActivityImportError", ("ChrononautException",)),
    ("LockError", ("ChrononautException",)),
    ("LockNotAvailableError", ("LockError",)),
    ("RecordLockedError", ("LockNotAvailableError",)),
    ("LockTimeoutError", ("LockError",)),
    ("DeadlockError", ("LockError",)),
    ("RecordLeasedError", ("LockError",)),
]


def test_all_sorted() -> None:
    """``__all__`` is sorted."""
    assert list(chrononaut.__all__) == sorted(chrononaut.__all__)


def test_all_no_duplicates() -> None:
    """``__all__`` names each export once."""
    assert len(chrononaut.__all__) == len(set(chrononaut.__all__))


def test_all_matches_spec() -> None:
    """``__all__`` is exactly SPEC §7's names."""
    assert set(chrononaut.__all__) == SPEC_NAMES


@pytest.mark.parametrize("name", sorted(SPEC_NAMES))
def test_name_importable(name: str) -> None:
    """Every public name is an attribute of the package."""
    assert getattr(chrononaut, name) is not None


def test_star_import() -> None:
    """``from chrononaut import *`` binds exactly ``__all__``."""
    namespace: dict[str, object] = {}
    exec("from chrononaut import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(chrononaut.__all__)


def test_public_names_documented() -> None:
    """Every public name has a docstring."""
    undocumented = [n for n in chrononaut.__all__ if not getattr(chrononaut, n).__doc__]
    assert undocumented == []


@pytest.mark.parametrize(("name", "parents"), HIERARCHY)
def test_error_hierarchy(name: str, parents: tuple[object, ...]) -> None:
    """Each error of SPEC §6 derives from its documented parents."""
    error = getattr(chrononaut, name)
    for parent in parents:
        base: type = getattr(chrononaut, parent) if isinstance(parent, str) else cast(type, parent)
        assert issubclass(error, base), (name, parent)


def test_errors_share_base() -> None:
    """Every exception class exported is a ``ChrononautException``."""
    errors = [
        getattr(chrononaut, n)
        for n in chrononaut.__all__
        if isinstance(getattr(chrononaut, n), type)
        and issubclass(getattr(chrononaut, n), BaseException)
    ]
    assert {e.__name__ for e in errors} == {name for name, _ in HIERARCHY}
    assert all(issubclass(e, chrononaut.ChrononautException) for e in errors)


def test_lock_errors_not_stale_errors() -> None:
    """Lock errors and stale writes are separate branches of the hierarchy."""
    assert not issubclass(chrononaut.LockError, chrononaut.StaleWriteError)
    assert not issubclass(chrononaut.StaleWriteError, chrononaut.LockError)


def test_package_names_in_api_reference() -> None:
    """Every name of ``chrononaut.__all__`` is rendered by the docs."""
    documented = {name for name, _ in documented_objects()}
    missing = [n for n in chrononaut.__all__ if f"chrononaut.{n}" not in documented]
    assert missing == []


def test_testing_names_in_api_reference() -> None:
    """Every name of ``chrononaut.testing.__all__`` is rendered by the docs."""
    import chrononaut.testing

    documented = {name for name, _ in documented_objects()}
    missing = [n for n in chrononaut.testing.__all__ if f"chrononaut.testing.{n}" not in documented]
    assert missing == []
