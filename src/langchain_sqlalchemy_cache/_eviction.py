"""When a ``max_entries`` cache trims its table.

Counting the rows on every write would cost a scan per write, so each cache object
counts its own writes instead and trims on its first one and then every
``check_every`` of them: it finds the
``max_entries``-th newest entry through the (namespace, updated_at) index and deletes
everything older, in batches. Between two trims one process adds at most
``check_every`` entries, so the table stays under ``max_entries + check_every`` per
writing process (plus entries written in the same instant as the oldest kept one).
"""

from __future__ import annotations

import threading

# Trim after writes worth 10% of the bound, but at least every 1,000 writes, so a big
# bound does not drift by a big absolute number.
_FRACTION = 10
_MAX_INTERVAL = 1000


def check_interval(max_entries: int) -> int:
    """How many writes one cache object lets pass between two trims."""
    return max(1, min(max_entries // _FRACTION, _MAX_INTERVAL))


class TrimSchedule:
    """Counts writes (from any thread) and says which write has to trim the table."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.check_every = check_interval(max_entries)
        self._lock = threading.Lock()
        # The first write trims: a short-lived process (a script, a CLI run, a worker
        # restarted often) may never write check_every entries, and must not let the
        # table grow without bound.
        self._writes = self.check_every - 1

    def wrote(self) -> bool:
        """Count one write; True for exactly one write in every ``check_every``."""
        with self._lock:
            self._writes += 1
            if self._writes < self.check_every:
                return False
            self._writes = 0
            return True
