"""`--autoscale MAX,MIN`: how many pool processes a worker wants, from its backlog — **pure**.

Celery's syntax (`MAX,MIN`, either order, or `MAX` alone) and rule: grow at once, up to MAX, while
messages wait for a process; shrink, down to MIN, only once fewer were needed for `keepalive`
seconds (Celery's AUTOSCALE_KEEPALIVE, 30 s; here `worker_autoscale_keepalive`). The worker parent
(worker/main.py) feeds `decide()` and resizes the pool; a process it retires finishes or returns what
it holds (a warm stop), as a recycled one does.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple


def parse_autoscale(value: Any, what: str = "--autoscale") -> Optional[Tuple[int, int]]:
    """'MAX,MIN' (either order), 'MAX', or a (max, min) pair -> (max, min); None/'' -> None.

    MIN 0 (Celery's default) means 1 here: a pool process consumes for itself, so one is always
    there to see messages arrive."""
    if value is None or value == "" or value is False:
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"{what} takes MAX,MIN or MAX (numbers of pool processes), not {value!r}")
    try:
        numbers = [int(p) for p in parts]
        if any(isinstance(p, bool) or (isinstance(p, float) and p != int(p)) for p in parts):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{what} takes MAX,MIN or MAX, whole numbers of pool processes, not {value!r}") from None
    high, low = max(numbers), (min(numbers) if len(numbers) == 2 else 0)
    if high < 1 or low < 0:
        raise ValueError(f"{what}: MAX must be >= 1 and MIN >= 0, not {value!r}")
    return high, max(1, low)


class Autoscaler:
    """The pool size wanted, decided from what the pool is doing and what waits for it."""

    def __init__(self, max_procs: int, min_procs: int, keepalive: float, now: float):
        if not 1 <= min_procs <= max_procs:
            raise ValueError(f"autoscale needs 1 <= MIN <= MAX, not MIN {min_procs}, MAX {max_procs}")
        if keepalive <= 0:
            raise ValueError(f"worker_autoscale_keepalive must be seconds > 0, not {keepalive!r}")
        self.max = max_procs
        self.min = min_procs
        self.keepalive = keepalive
        self.needed_at = now   # the last time every process was needed (or the pool grew)
        self.demand = 0        # busy processes plus messages waiting, at the last decision

    def decide(self, now: float, size: int, busy: int, waiting: int) -> int:
        """The size wanted now: `size` processes, `busy` of them running a task, `waiting` messages
        ready in the worker's queues that no process has taken."""
        demand = self.demand = busy + waiting
        if demand >= size:
            self.needed_at = now
        if demand > size and size < self.max:
            return min(self.max, demand)
        if size > self.min and demand < size and now - self.needed_at >= self.keepalive:
            return max(self.min, demand)
        return max(self.min, min(self.max, size))

    def info(self, size: int) -> Dict[str, Any]:
        """Celery's `autoscaler` entry of `inspect stats`."""
        return {"max": self.max, "min": self.min, "current": size, "qty": self.demand}
