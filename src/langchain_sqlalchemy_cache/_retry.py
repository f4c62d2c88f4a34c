"""When a failed statement is run again, and after how long.

Every statement the cache sends is idempotent (a SELECT, an upsert of whole entries, a
DELETE by age), so running one again is always safe. Two failures are worth it:

- The server dropped the connection (restart, idle timeout, ``pg_terminate_backend``,
  ``KILL``): SQLAlchemy has invalidated it, and one retry on a fresh connection hides
  the drop. It costs nothing until a drop happens, where a pre-ping would cost a round
  trip on every call.
- The server chose the statement as a deadlock victim (or a lock wait timed out): an
  upsert batch locks rows in key order, but a purge or trim deletes in age order, so the
  two can cross. The server already rolled the victim back; a retry after a short random
  pause, when the other statement has finished, goes through. Without it a whole batch
  of writes would be lost under ``on_error="miss"``.
"""

from __future__ import annotations

import random

from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, InterfaceError

# PostgreSQL SQLSTATEs: deadlock_detected, serialization_failure, lock_not_available.
_PG_CONFLICTS = frozenset({"40P01", "40001", "55P03"})
# MySQL/MariaDB error codes: ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT.
_MYSQL_CONFLICTS = frozenset({1213, 1205})
# ER_NET_PACKET_TOO_LARGE: the server closes the connection; sending again fails again.
MYSQL_PACKET_TOO_LARGE = 1153
# Attempts in all for a lock conflict; one retry for a dropped connection.
CONFLICT_ATTEMPTS = 4


def mysql_error_code(error: BaseException | None) -> object:
    """The MySQL error number of a driver exception (its first argument), if any."""
    args: tuple[object, ...] = getattr(error, "args", ())
    return args[0] if args else None


def lost_protocol(context: ExceptionContext) -> None:
    """``handle_error`` hook: a driver that lost its place in the protocol dropped the link.

    A statement sent while a terminated session's goodbye is still unread makes asyncpg
    0.29 raise ``InternalClientError`` ("cannot switch to state 12; another operation (2)
    is in progress"). SQLAlchemy 2.0 passes it on unwrapped, 2.1 as an ``InternalError``,
    and neither counts it as a disconnect, so the connection would be pooled again;
    counted as one, the connection (and the pool's older ones, likely ended the same
    way) is replaced.
    """
    error = context.original_exception
    # SQLAlchemy 2.1 wraps it in an exception of its own adapter, caused by asyncpg's.
    for raised in (error, error.__cause__):
        kind = type(raised)
        if kind.__name__ == "InternalClientError" and kind.__module__.startswith("asyncpg"):
            context.is_disconnect = True


def as_dropped(exc: BaseException, invalidated: bool) -> DBAPIError | None:
    """``exc`` as a dropped-connection error, if the driver raised it unwrapped.

    ``invalidated``: whether SQLAlchemy invalidated the connection over it
    (``lost_protocol``). The result reaches ``retry_delay`` as any drop does.
    """
    if not invalidated or isinstance(exc, DBAPIError) or not isinstance(exc, Exception):
        return None
    return InterfaceError(None, None, exc, connection_invalidated=True)


def is_lock_conflict(exc: DBAPIError) -> bool:
    """Whether the server rolled the statement back over a lock conflict."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state in _PG_CONFLICTS or mysql_error_code(orig) in _MYSQL_CONFLICTS


def retry_delay(exc: DBAPIError, attempt: int) -> float | None:
    """Seconds to wait before running the statement again, or None to give up.

    ``attempt`` is the number of the attempt that just failed, from 1.
    """
    if exc.connection_invalidated:
        too_large = mysql_error_code(exc.orig) == MYSQL_PACKET_TOO_LARGE
        return 0.0 if attempt == 1 and not too_large else None
    if is_lock_conflict(exc) and attempt < CONFLICT_ATTEMPTS:
        # Random, growing: two victims of one deadlock must not collide again.
        return random.uniform(0.005, 0.02) * attempt
    return None
