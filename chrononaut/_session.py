"""Enabling Chrononaut on a session factory.

Listeners go only on the factory we are given: a ``sessionmaker`` keeps a private
``Session`` subclass of its own, and SQLAlchemy attaches session events registered
on a sessionmaker to that subclass, so two factories (or two apps) never see each
other's listeners, and nothing is registered on the global ``Session``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.exc import StaleDataError

from chrononaut._leases import _install_listeners as install_lease_listeners
from chrononaut._leases import lease_change_info
from chrononaut.errors import ChrononautException, StaleWriteError
from chrononaut.locking._common import drop_rolled_back_locks
from chrononaut.versioning._bulk import continued_inserts
from chrononaut.versioning._capture import Capture
from chrononaut.versioning._change_info import (
    Settings,
    StaticSettings,
    drop_rolled_back,
    register_change_info_provider,
)
from chrononaut.versioning._concurrency import (
    CANDIDATES_KEY,
    EXPLAINED_KEY,
    drop_expected_versions,
    end_flushing,
    flushing,
    watch_rollbacks,
)
from chrononaut.versioning._history import CLOSES_KEY, remember_session
from chrononaut.versioning._meta import VALID_FROM_KEY, VERSION_KEY, meta_of

__all__ = ["versioned_session"]

_MARK = "__chrononaut_versioned__"

S = TypeVar("S", bound=Session)


def _explain_stale_writes(cls: type[Session]) -> None:
    """Make ``cls.flush`` raise an explained StaleWriteError for a stale write.

    SQLAlchemy has no event through which a flush error can be replaced, so the
    flush method of the class we were given is wrapped (for a sessionmaker, the
    private subclass it made for itself).

    The flush's rollback undoes what the transaction did before it, so the error
    is built from the engine's ``rollback`` event, before the ROLLBACK (see
    ``versioning._concurrency``); only when that found nothing is the row read
    again afterwards.
    """
    original = cls.flush

    def flush(self: Session, objects: Any = None) -> None:
        token = flushing(self)
        try:
            original(self, objects)
        except StaleDataError as exc:
            if isinstance(exc, StaleWriteError):
                raise
            from chrononaut.versioning._concurrency import explain_stale_write

            explained = self.info.pop(EXPLAINED_KEY, None)
            candidates = self.info.pop(CANDIDATES_KEY, None) or []
            if isinstance(explained, Exception):
                # The explanation read before the rollback, or the error of that
                # read when it lost the connection (nothing left to read on).
                raise explained from exc
            raise explain_stale_write(self, candidates, exc) from exc
        finally:
            end_flushing(token)
            # Left only when the rollback itself failed (another error propagates):
            # it must not be taken for a later flush's explanation.
            self.info.pop(EXPLAINED_KEY, None)

    flush.__doc__ = original.__doc__
    flush.__wrapped__ = original  # type: ignore[attr-defined]
    cls.flush = flush  # type: ignore[method-assign]
    setattr(cls, _MARK, True)


def _count_closes(cls: type[Session]) -> None:
    """Count the closes of ``cls``'s sessions (``session.info``): a detached record
    reads its history through the session that last held it only while that
    session is open (SPEC §2), and SQLAlchemy has no close event."""
    for name in ("close", "reset", "invalidate"):
        original = getattr(cls, name, None)
        if original is None:
            continue  # reset() is new in SQLAlchemy 2.0.22

        def closing(self: Session, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            try:
                return __original(self, *args, **kwargs)
            finally:
                self.info[CLOSES_KEY] = self.info.get(CLOSES_KEY, 0) + 1

        closing.__doc__ = original.__doc__
        closing.__name__ = name
        closing.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(cls, name, closing)


def _detached(session: Session, instance: Any) -> None:
    # Expunged, or detached by a commit after its delete: remembered for reading.
    if meta_of(type(instance)) is not None:
        remember_session(session, instance_state(instance))


def _guard_legacy_bulk(cls: type[Session]) -> None:
    """Refuse the legacy bulk methods where they would change a Versioned row.

    ``bulk_save_objects`` (for records already in the database) and
    ``bulk_update_mappings`` bypass the flush events and the version check, so
    they could only write history that does not hold the prior values. They are
    refused before any statement (SPEC §2). Inserts of new records
    (``bulk_save_objects``, ``bulk_insert_mappings``) pass; a key deleted earlier
    continues its version sequence, as in a flush.
    """
    save_objects = cls.bulk_save_objects
    update_mappings = cls.bulk_update_mappings
    insert_mappings = cls.bulk_insert_mappings

    def bulk_save_objects(self: Session, objects: Any, *args: Any, **kwargs: Any) -> None:
        objects = list(objects)
        new: dict[Any, list[Any]] = {}
        for obj in objects:
            meta = meta_of(type(obj))
            if meta is None:
                continue
            state = instance_state(obj)
            if state.key is not None:
                raise ChrononautException(
                    f"bulk_save_objects() would update {type(obj).__name__} rows without "
                    f"history or version check; use session.add_all() and flush, or "
                    f"session.execute(update({type(obj).__name__}), [...])"
                )
            new.setdefault(meta, []).append(state)
        for meta, states in new.items():
            # A dataclass model's constructor may have set version's default: the
            # rows are given without Chrononaut's columns, which it sets itself.
            given = [
                {k: v for k, v in state.dict.items() if k not in (VERSION_KEY, VALID_FROM_KEY)}
                for state in states
            ]
            rows = continued_inserts(self, meta, given, check=False)
            for state, row in zip(states, rows or (), strict=False):
                state.dict.update(row)
        save_objects(self, objects, *args, **kwargs)

    def bulk_insert_mappings(
        self: Session, mapper: Any, mappings: Any, *args: Any, **kwargs: Any
    ) -> None:
        cls_ = getattr(sa.inspect(mapper), "class_", None)
        meta = meta_of(cls_) if cls_ is not None else None
        if meta is not None:
            mappings = list(mappings)
            mappings = continued_inserts(self, meta, mappings) or mappings
        insert_mappings(self, mapper, mappings, *args, **kwargs)

    def bulk_update_mappings(self: Session, mapper: Any, mappings: Any, **kwargs: Any) -> None:
        cls_ = getattr(sa.inspect(mapper), "class_", None)
        if cls_ is not None and meta_of(cls_) is not None:
            raise ChrononautException(
                f"bulk_update_mappings() would update {cls_.__name__} rows without history "
                f"or version check; use session.execute(update({cls_.__name__}), [...]) "
                f"(ORM bulk UPDATE by primary key), which Chrononaut captures"
            )
        update_mappings(self, mapper, mappings, **kwargs)

    bulk_save_objects.__doc__ = save_objects.__doc__
    bulk_update_mappings.__doc__ = update_mappings.__doc__
    bulk_insert_mappings.__doc__ = insert_mappings.__doc__
    cls.bulk_save_objects = bulk_save_objects  # type: ignore[method-assign]
    cls.bulk_update_mappings = bulk_update_mappings  # type: ignore[method-assign]
    cls.bulk_insert_mappings = bulk_insert_mappings  # type: ignore[method-assign]


def _listen(target: Any, settings: Settings) -> None:
    capture = Capture(settings)
    event.listen(target, "before_flush", capture.before_flush)
    event.listen(target, "after_flush", capture.after_flush)
    event.listen(target, "do_orm_execute", capture.do_orm_execute)
    # A failed flush is explained before its rollback, on the engine's event.
    event.listen(target, "after_begin", watch_rollbacks)
    # Appended change_info is meant for its transaction only.
    event.listen(target, "after_soft_rollback", drop_rolled_back)
    event.listen(target, "after_soft_rollback", drop_expected_versions)
    # Row locks taken in a rolled-back savepoint are released: history rows no
    # longer claim them.
    event.listen(target, "after_soft_rollback", drop_rolled_back_locks)
    event.listen(target, "persistent_to_detached", _detached)
    event.listen(target, "deleted_to_detached", _detached)
    install_lease_listeners(target)  # goes around capture's listeners (see there)
    register_change_info_provider(lease_change_info)


@overload
def versioned_session(
    factory: sessionmaker[S],
    *,
    extra_change_info_func: Callable[[], Mapping[str, Any]] | None = ...,
    require_extra_change_info: bool = ...,
    settings: Settings | None = ...,
) -> sessionmaker[S]: ...


@overload
def versioned_session(
    factory: type[S],
    *,
    extra_change_info_func: Callable[[], Mapping[str, Any]] | None = ...,
    require_extra_change_info: bool = ...,
    settings: Settings | None = ...,
) -> type[S]: ...


def versioned_session(
    factory: sessionmaker[S] | type[S],
    *,
    extra_change_info_func: Callable[[], Mapping[str, Any]] | None = None,
    require_extra_change_info: bool = False,
    settings: Settings | None = None,
) -> sessionmaker[S] | type[S]:
    """Make sessions from ``factory`` capture history and explain stale writes.

    For plain SQLAlchemy (``VersionedSQLAlchemy`` does this for Flask)::

        Session = versioned_session(sessionmaker(engine))

    :param factory: a ``sessionmaker`` or a ``Session`` subclass of your own;
        changed in place and returned.
    :param extra_change_info_func: a callable returning a dict merged into
        ``change_info["extra"]`` of every history row (context managers win).
    :param require_extra_change_info: refuse to flush a versioned change made
        outside :func:`~chrononaut.extra_change_info` / :func:`~chrononaut.rationale`.
    :param settings: where those two settings come from instead (used by
        ``VersionedSQLAlchemy`` to read the Flask config).
    :raises TypeError: for anything but a sessionmaker or a Session subclass.
    """
    if settings is None:
        settings = StaticSettings(extra_change_info_func, require_extra_change_info)
    if isinstance(factory, sessionmaker):
        target: type[Session] = factory.class_
    elif isinstance(factory, type) and issubclass(factory, Session):
        if factory is Session:
            raise TypeError(
                "versioned_session() would change every Session in the process; pass a "
                "sessionmaker or a Session subclass of your own"
            )
        target = factory
    else:
        raise TypeError(
            f"versioned_session() takes a sessionmaker or a Session subclass, not "
            f"{type(factory).__name__}"
        )
    if getattr(target, _MARK, False):
        return factory  # already versioned (itself or a base class): capture once
    _explain_stale_writes(target)
    _count_closes(target)
    _guard_legacy_bulk(target)
    _listen(target, settings)
    return factory
