"""Re-running a unit of work after a conflict that a retry can resolve.

Some conflicts are nobody's mistake and vanish when the work simply runs again
on fresh data: a background job incrementing a counter lost the race to another
job (:class:`~chrononaut.StaleWriteError`), or PostgreSQL aborted one of two
transactions that locked rows in opposite orders (:class:`~chrononaut.DeadlockError`,
or a raw deadlock / serialization failure from the driver). For those::

    from chrononaut.retry import retry_on_conflict

    @retry_on_conflict(db.session, attempts=5)
    def add_points(user_id: int, points: int) -> None:
        user = db.session.get(User, user_id)     # load inside: a retry reloads
        user.points += points
        # committed by the decorator; a conflict rolls back and runs it again

or, without a function of its own::

    from chrononaut.retry import retrying

    for attempt in retrying(db.session):
        with attempt:
            user = db.session.get(User, user_id)
            user.points += points

**When not to retry.** A user-facing edit — a form, an API ``PUT`` with a
version from the client — must *not* be retried: the user decided on the values
they saw, and re-applying them on top of someone else's change is exactly the
lost update optimistic concurrency exists to prevent. Show the conflict instead
(``StaleWriteError.changes``, the 409 of :func:`~chrononaut.register_error_handlers`).
A version declared with :meth:`~chrononaut.Versioned.expect_version` fails every
attempt the same way anyway. Retry only work that computes its writes from what it
reads *inside* the retried block.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, scoped_session

from chrononaut._db_errors import describe_db_error, sqlstate
from chrononaut.errors import ChrononautException, DeadlockError, StaleWriteError

__all__ = ["Attempt", "is_retryable", "retry_on_conflict", "retrying"]

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("chrononaut.retry")

#: SQLSTATEs a retry resolves: deadlock_detected, serialization_failure.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})

_DEPTH_KEY = "chrononaut.retry_depth"

SessionSource = Session | scoped_session[Any] | Callable[[], Session]


def is_retryable(error: BaseException) -> bool:
    """Whether running the unit of work again can resolve ``error``.

    ``True`` for :class:`~chrononaut.StaleWriteError`, :class:`~chrononaut.DeadlockError`
    and driver errors with SQLSTATE 40P01 (deadlock detected) or 40001
    (serialization failure, from ``REPEATABLE READ`` / ``SERIALIZABLE`` transactions).

    :param error: the exception the unit of work raised.
    """
    if isinstance(error, (StaleWriteError, DeadlockError)):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        return sqlstate(error) in RETRYABLE_SQLSTATES
    return False


def loggable(error: BaseException) -> str:
    """What the ``chrononaut.retry`` logger says about ``error``: safe to log.

    A driver error's text quotes the statement and its parameters (hidden values
    included) and a ``DETAIL`` line with row values, so it is reduced to the
    error class, the SQLSTATE and the first line of the server's message.
    Chrononaut's own errors name records and versions, never values; the driver
    error they were raised from is left out the same way.
    """
    if isinstance(error, sa_exc.DBAPIError):
        return describe_db_error(error)
    if isinstance(error, (StaleWriteError, DeadlockError)):
        return f"{type(error).__name__}: {error}"
    return type(error).__name__


def _session_of(source: SessionSource) -> Session:
    if isinstance(source, Session):
        return source
    if isinstance(source, scoped_session):
        scoped: Session = source()
        return scoped
    if callable(source):
        session = source()
        if isinstance(session, Session):
            return session
    raise TypeError(
        f"expected a Session, a scoped_session (such as db.session) or a callable "
        f"returning a Session, not {type(source).__name__}"
    )


def _session_of_later(source: object) -> None:
    """Refuse at decoration time what can never give a session (a callable may,
    later: it is resolved at each call)."""
    if not isinstance(source, (Session, scoped_session)) and not callable(source):
        raise TypeError(
            f"expected a Session, a scoped_session (such as db.session) or a callable "
            f"returning a Session, not {type(source).__name__}"
        )


def _check_arguments(
    attempts: int,
    backoff: float,
    max_backoff: float,
    commit: object = True,
    on_retry: object = None,
    sleep: object = time.sleep,
) -> None:
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be an int >= 1, not {attempts!r}")
    for name, value in (("backoff", backoff), ("max_backoff", max_backoff)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    if not isinstance(commit, bool):
        raise TypeError(f"commit must be True or False, not {commit!r}")
    if on_retry is not None and not callable(on_retry):
        raise TypeError(f"on_retry must be callable or None, not {type(on_retry).__name__}")
    if not callable(sleep):
        raise TypeError(f"sleep must be callable, not {type(sleep).__name__}")


def _delay(failures: int, backoff: float, max_backoff: float) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random.

    The random half keeps two workers that collided from colliding again in
    lockstep; the fixed half keeps the wait from collapsing to nothing.
    """
    cap = float(min(max_backoff, backoff * 2 ** (failures - 1)))
    return cap / 2 + random.uniform(0, cap / 2)


class Attempt:
    """One run of the unit of work: use it as a context manager (see :func:`retrying`).

    On a normal exit it commits (when the loop was asked to); on a retryable
    error it rolls the session back, expires its objects and swallows the error
    unless it was the last attempt.

    :ivar number: 1 for the first run, 2 for the first retry, ...
    :ivar error: the retryable error this attempt ended with, else ``None``.
    """

    def __init__(self, runner: _Runner, number: int) -> None:
        self._runner = runner
        self.number = number
        self.error: BaseException | None = None
        self.succeeded = False
        self._entered = False

    @property
    def last(self) -> bool:
        """Whether no retry follows this attempt."""
        return self.number >= self._runner.attempts

    def __enter__(self) -> Attempt:
        self._entered = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        runner = self._runner
        if exc is None:
            if runner.nested:
                self.succeeded = True
                return False
            try:
                if runner.commit:
                    runner.session.commit()
            except Exception as commit_error:
                if not is_retryable(commit_error):
                    raise
                return self._failed(commit_error, reraise=True)
            self.succeeded = True
            return False
        if runner.nested or not isinstance(exc, Exception) or not is_retryable(exc):
            return False  # not ours to handle: propagate unchanged
        return self._failed(exc, reraise=False)

    def _failed(self, error: BaseException, *, reraise: bool) -> bool:
        runner = self._runner
        self.error = error
        # A fresh start: the failed transaction is unusable, and every object the
        # attempt loaded holds values from before the other writer's change.
        runner.session.rollback()
        runner.session.expire_all()
        if self.last:
            log.info("giving up after %d attempts: %s", self.number, loggable(error))
            if reraise:
                raise error
            return False
        log.debug("attempt %d hit a conflict, retrying: %s", self.number, loggable(error))
        if runner.on_retry is not None:
            runner.on_retry(self.number, error)
        return True


class _Runner:
    def __init__(
        self,
        session: Session,
        attempts: int,
        commit: bool,
        on_retry: Callable[[int, BaseException], None] | None,
        nested: bool,
    ) -> None:
        self.session = session
        self.attempts = attempts
        self.commit = commit
        self.on_retry = on_retry
        self.nested = nested


def retrying(
    session: SessionSource,
    *,
    attempts: int = 3,
    backoff: float = 0.02,
    max_backoff: float = 0.5,
    commit: bool = True,
    on_retry: Callable[[int, BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Attempt]:
    """Attempts of a unit of work, for a ``for`` loop with a ``with`` block inside::

        for attempt in retrying(db.session, attempts=5):
            with attempt:
                job = db.session.get(Job, job_id)
                job.runs += 1

    Each attempt runs the block; a normal exit commits (``commit=True``) and ends
    the loop. A retryable error (:func:`is_retryable`) rolls back, expires every
    object of the session, sleeps a jittered, growing delay and runs the block
    again; after ``attempts`` runs the last error propagates (the session rolled
    back and usable). Other exceptions propagate at once, untouched.

    Load everything the block needs *inside* it: objects from before the loop are
    expired by a retry and reload the other writer's values.

    Nested use on the same session (a retried function calling another) runs the
    inner block once, without committing or retrying: the outermost loop owns the
    transaction, and an inner retry would roll back the outer block's work.

    :param session: a ``Session``, a ``scoped_session`` (``db.session``) or a
        callable returning the session the block uses.
    :param attempts: runs in total (1 means no retry).
    :param backoff: the delay before the first retry, in seconds (it doubles with
        each further retry, up to ``max_backoff``); half of it is random jitter.
    :param max_backoff: the longest delay, in seconds.
    :param commit: commit after the block (so a conflict found by the commit's
        flush is retried too); ``False`` when the block commits itself.
    :param on_retry: called as ``on_retry(attempt_number, error)`` before each retry.
    :param sleep: the function used to wait (tests can record the delays).
    :raises ValueError: for ``attempts`` < 1 or a negative, NaN or infinite delay.
    :raises TypeError: a non-bool ``commit``, a non-callable ``on_retry`` or
        ``sleep``, or a ``session`` that is no session.
    :raises ChrononautException: when the session holds unflushed changes (a
        retry would roll them back).
    """
    _check_arguments(attempts, backoff, max_backoff, commit, on_retry, sleep)
    resolved = _session_of(session)
    depth = int(resolved.info.get(_DEPTH_KEY, 0))
    if depth == 0 and (resolved.new or resolved.dirty or resolved.deleted):
        raise ChrononautException(
            "the session holds unflushed changes made before this unit of work; a retry "
            "would roll them back. Commit them first, or make them part of the retried work."
        )
    runner = _Runner(resolved, attempts, commit, on_retry, nested=depth > 0)
    resolved.info[_DEPTH_KEY] = depth + 1
    try:
        for number in range(1, (1 if runner.nested else attempts) + 1):
            attempt = Attempt(runner, number)
            yield attempt
            if not attempt._entered:
                raise ChrononautException("use each attempt as a context manager: `with attempt:`")
            if attempt.succeeded or attempt.error is None:
                return
            sleep(_delay(number, backoff, max_backoff))
    finally:
        if depth:
            resolved.info[_DEPTH_KEY] = depth
        else:
            resolved.info.pop(_DEPTH_KEY, None)


@overload
def retry_on_conflict(
    session: SessionSource,
    /,
    *,
    attempts: int = ...,
    backoff: float = ...,
    max_backoff: float = ...,
    commit: bool = ...,
    on_retry: Callable[[int, BaseException], None] | None = ...,
    sleep: Callable[[float], None] = ...,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


@overload
def retry_on_conflict(
    session: SessionSource,
    function: Callable[P, R],
    /,
) -> Callable[P, R]: ...


def retry_on_conflict(
    session: SessionSource,
    function: Callable[P, R] | None = None,
    /,
    *,
    attempts: int = 3,
    backoff: float = 0.02,
    max_backoff: float = 0.5,
    commit: bool = True,
    on_retry: Callable[[int, BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: run the function as a unit of work, retried on conflicts.

    ::

        @retry_on_conflict(db.session, attempts=5)
        def settle(invoice_id: int) -> None:
            invoice = db.session.get(Invoice, invoice_id)
            invoice.state = "settled"

    The same semantics as :func:`retrying` (same parameters): commit after the
    function returns, roll back + expire + jittered backoff on a retryable error,
    the last error propagates. The function's return value is returned.
    ``retry_on_conflict(db.session, function)`` wraps an existing function.

    Not for user-facing edits (see the module documentation): show those conflicts.

    :param session: the session the function works in (``db.session``).
    :param function: the function to wrap (or use the decorator form).
    """
    _check_arguments(attempts, backoff, max_backoff, commit, on_retry, sleep)
    _session_of_later(session)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            for attempt in retrying(
                session,
                attempts=attempts,
                backoff=backoff,
                max_backoff=max_backoff,
                commit=commit,
                on_retry=on_retry,
                sleep=sleep,
            ):
                with attempt:
                    result = fn(*args, **kwargs)
                if attempt.succeeded:
                    return result
            raise AssertionError("unreachable: the last attempt returns or raises")

        return wrapper

    if function is not None:
        return decorate(function)
    return decorate
