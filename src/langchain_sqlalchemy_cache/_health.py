"""What ``health()`` reports: whether the cache's table answers, and how fast."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from ._secrets import mask_url

# A key no entry has: real keys are SHA-256 hex digests, and an entry under this one
# would take a SHA-256 preimage of all zeros.
PROBE_KEY = "0" * 64


@dataclass(frozen=True)
class Health:
    """The outcome of one ``health()`` probe: a lookup of a key no entry has.

    Attributes:
        ok: The table answered within the deadline.
        latency: Seconds the probe took (None when it failed).
        error: Why it failed, one line with no secrets (None when ``ok``).
        breaker: The circuit breaker's state: ``"closed"``, ``"open"`` or
            ``"half_open"``. The probe runs whatever the state; an open breaker with
            ``ok`` True means the database is back and calls resume after the
            cool-down.
    """

    ok: bool
    latency: float | None
    error: str | None
    breaker: str


def describe(exc: BaseException, redact: Callable[[str], str] = mask_url) -> str:
    """One line saying what went wrong, for people: the driver's error, no password."""
    orig = getattr(exc, "orig", None)
    cause = orig if isinstance(exc, SQLAlchemyError) and orig is not None else exc
    text = str(cause)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = f": {lines[0]}" if lines else ""
    return redact(f"{type(cause).__name__}{detail}")
