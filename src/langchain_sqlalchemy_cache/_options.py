"""Every setting of a cache, checked once: the options object the entry points share.

``SQLAlchemyCache`` (and so ``SQLiteCache`` and ``SQLAlchemyMd5Cache``), the command line
and ``migrate`` each turn their arguments into one ``CacheOptions`` and read their
settings from it, so a wrong value is refused with the same message whichever way it
came in, before any engine is made. What only a backend can judge (how long a table
name may be there) is checked where the dialect is known: ``CacheTable.build``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from ._deadline import DEFAULT_TIMEOUT, optional_seconds, positive_seconds
from ._errors import ConfigurationError, positive_int
from ._identifiers import check_namespace
from ._local_tier import DEFAULT_MAX_BYTES, DEFAULT_MAX_STALENESS
from ._policy import ErrorPolicy, OnError
from ._schema import DEFAULT_TABLE_NAME

# How long single_flight=True lets waiters wait for the filler's store.
SINGLE_FLIGHT_DEFAULT_WAIT = 60.0


def qualified_name(table_name: str, schema: str | None) -> str:
    """``schema.table_name``, or ``table_name`` without a schema, as messages show a table."""
    return table_name if schema is None else f"{schema}.{table_name}"


def _name(option: str, value: object, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        allowed = "a non-empty str or None" if optional else "a non-empty str"
        msg = f"{option} must be {allowed}, got {value!r}"
        raise ConfigurationError(msg)
    return value


def _optional_int(option: str, value: object) -> int | None:
    return None if value is None else positive_int(option, value)


def _local_max_bytes(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        msg = (
            f"local_max_bytes must be an int >= 0 (bytes of entries kept in memory; 0 turns "
            f"the in-process tier off), got {value!r}"
        )
        raise ConfigurationError(msg)
    return value


def _single_flight(value: object) -> float | None:
    """``single_flight``'s wait limit in seconds, or None when it is off."""
    if value is False or value is None:
        return None
    if value is True:
        return SINGLE_FLIGHT_DEFAULT_WAIT
    try:
        return positive_seconds("single_flight", value)
    except ConfigurationError:
        msg = (
            "single_flight must be False, True (waiters wait up to "
            f"{SINGLE_FLIGHT_DEFAULT_WAIT:g} s for the store) or a positive number of "
            f"seconds or timedelta, got {value!r}"
        )
        raise ConfigurationError(msg) from None


def _on_error(value: object) -> OnError:
    # The rule and its message belong to the error policy, which is built from this value.
    return "raise" if ErrorPolicy(value).raises else "miss"


@dataclass(frozen=True, init=False)
class CacheOptions:
    """The settings of one cache, each checked once, with durations in seconds.

    The attributes are those keyword arguments of ``SQLAlchemyCache`` that are settings
    (not the engines, replicas or ``cache_schema``), under the same names and with the
    same defaults; ``SQLAlchemyCache`` documents what each one does. Durations given as
    a ``timedelta`` are kept as seconds, and ``single_flight`` as its wait limit (None:
    off). ``migrate`` reads ``timeout`` as the deadline of its whole run.
    """

    table_name: str
    schema: str | None
    namespace: str
    create_table: bool
    store_prompts: bool
    on_error: OnError
    ttl: float | None
    max_entries: int | None
    timeout: float | None
    coalesce: bool
    max_batch_size: int
    max_concurrency: int | None
    max_replica_lag: float | None
    breaker_threshold: int | None
    breaker_cooldown: float
    local_max_bytes: int
    local_max_staleness: float
    single_flight: float | None

    def __init__(
        self,
        *,
        table_name: str = DEFAULT_TABLE_NAME,
        schema: str | None = None,
        namespace: str = "",
        create_table: bool = True,
        store_prompts: bool = True,
        on_error: OnError = "miss",
        ttl: float | timedelta | None = None,
        max_entries: int | None = None,
        timeout: float | timedelta | None = DEFAULT_TIMEOUT,
        coalesce: bool = True,
        max_batch_size: int = 500,
        max_concurrency: int | None = None,
        max_replica_lag: float | timedelta | None = None,
        breaker_threshold: int | None = 5,
        breaker_cooldown: float | timedelta = 2.0,
        local_max_bytes: int = DEFAULT_MAX_BYTES,
        local_max_staleness: float | timedelta = DEFAULT_MAX_STALENESS,
        single_flight: bool | float | timedelta = False,
    ) -> None:
        """Check every setting; see ``SQLAlchemyCache`` for what each one means.

        Raises:
            ConfigurationError: A setting cannot be used; the message names it and
                says what to pass instead.
        """
        checked: dict[str, Any] = {
            "table_name": _name("table_name", table_name),
            "schema": _name("schema", schema, optional=True),
            "namespace": check_namespace(namespace),
            "create_table": bool(create_table),
            "store_prompts": bool(store_prompts),
            "on_error": _on_error(on_error),
            "ttl": optional_seconds("ttl", ttl),
            "max_entries": _optional_int("max_entries", max_entries),
            "timeout": optional_seconds("timeout", timeout),
            "coalesce": bool(coalesce),
            # Without coalescing there are no batches: the size is neither read nor checked.
            "max_batch_size": positive_int("max_batch_size", max_batch_size)
            if coalesce
            else max_batch_size,
            "max_concurrency": _optional_int("max_concurrency", max_concurrency),
            "max_replica_lag": optional_seconds("max_replica_lag", max_replica_lag),
            "breaker_threshold": _optional_int("breaker_threshold", breaker_threshold),
            "breaker_cooldown": positive_seconds("breaker_cooldown", breaker_cooldown),
            "local_max_bytes": _local_max_bytes(local_max_bytes),
            "local_max_staleness": positive_seconds("local_max_staleness", local_max_staleness),
            "single_flight": _single_flight(single_flight),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def qualified_name(self) -> str:
        """The table as messages show it: ``schema.table_name``, or ``table_name``."""
        return qualified_name(self.table_name, self.schema)

    def arguments(self) -> dict[str, Any]:
        """The settings as keyword arguments of ``SQLAlchemyCache`` (checked again there)."""
        off = self.single_flight is None
        return {**asdict(self), "single_flight": False if off else self.single_flight}
