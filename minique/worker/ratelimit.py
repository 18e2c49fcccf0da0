"""Rate limits (Celery's "10/s", "100/m", "1000/h"; a bare number is per second).

`worker_rate_limit_scope = "cluster"` (the default): a task's limit holds across every worker and
host. Before a limited task runs, its pool process reserves the task's next start in Redis
(`ratelimit_lua/reserve.lua`: starts at least 1/rate apart, per task name, and per
`rate_limit_key` when one is given). A start that is due now runs; a later one is the task's own:
the message is parked in the delayed set until then (settle's THROTTLED) and runs when it comes
back, without asking again. No process sleeps holding a task, and other tasks are not held up.

`worker_rate_limit_scope = "worker"` keeps Celery's meaning (a limit per worker): the worker parent
splits a task's limit evenly over its pool processes and writes the per-process interval into shared
memory (`RateLimitTable`, under a seqlock); each pool process keeps one token bucket (capacity 1)
per limited task (`RateLimiter`) and waits, before running a task, until its bucket allows it.

In both scopes the table carries the intervals (cluster: 1/rate; worker: pool size/rate), so
`app.control.rate_limit(name, rate)` changes them at run time on every worker.
"""
from __future__ import annotations

import logging
import mmap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from .. import keys, serializers
from ..lua import Scripts
from .seqlock import SeqLock

log = logging.getLogger("minique.worker")
SCRIPTS = Scripts(Path(__file__).parent / "ratelimit_lua")
SCOPES = ("cluster", "worker")
RESERVED = "rate_limit_at"  # header of a parked message: the start it reserved (equal to its ETA)
KEY_HEADER = "rate_limit_key"  # header: the key a limit is counted per (apply_async(rate_limit_key=...))


def parse_rate(value: Any) -> float:
    """Celery's rate strings as tasks per second: "10/s", "100/m", "1000/h", 5 (per second); 0/None: no limit."""
    if value in (None, "", 0, "0"):
        return 0.0
    if isinstance(value, (int, float)):
        return max(0.0, float(value))
    amount, _, unit = str(value).strip().partition("/")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit.strip().lower())
    if per is None:
        raise ValueError(f"bad rate limit {value!r}: use N/s, N/m or N/h")
    return max(0.0, float(amount) / per)


def initial_rates(app: Any) -> Dict[str, float]:
    """Rate limits from task options, task_annotations ({name or '*': {'rate_limit': ...}}) and
    task_default_rate_limit."""
    conf = app.conf
    annotations = conf.task_annotations if isinstance(conf.task_annotations, dict) else {}
    default = annotations.get("*", {}).get("rate_limit") or conf.task_default_rate_limit
    out: Dict[str, float] = {}
    for name, task in app.tasks.items():
        value = annotations.get(name, {}).get("rate_limit") or getattr(task, "rate_limit", None) or default
        try:
            rate = parse_rate(value)
        except ValueError as exc:
            log.warning("ignoring the rate limit of %s: %s", name, exc)
            continue
        if rate:
            out[name] = rate
    return out


class RateLimitTable:
    """{task name: seconds between starts in one pool process}, shared with the pool (made before forking)."""

    SIZE = 64 * 1024

    def __init__(self) -> None:
        self.buf = mmap.mmap(-1, self.SIZE)
        self.region = SeqLock(self.buf, 0, self.SIZE)
        self.lock = threading.Lock()  # one writer at a time (the parent's main and control threads)

    def write(self, intervals: Dict[str, float]) -> None:
        payload = serializers.pack(intervals)
        if len(payload) > self.region.max_payload:
            raise ValueError("too many rate limits")
        with self.lock:
            self.region.write(payload)

    def seq(self) -> int:
        return self.region.seq()

    def read(self) -> Optional[Dict[str, float]]:
        """The table, or None if it changed while being read (try again later)."""
        payload = self.region.read()
        if payload is None:
            return None
        return serializers.unpack(payload) if payload else {}


class RateLimiter:
    """One pool process's token buckets (capacity 1) over the shared table; cheap when nothing is limited."""

    def __init__(self, table: RateLimitTable, slot: Any = None, client: Any = None):
        self.table = table
        self.region = table.region  # (its sequence is read per task: one call, not two)
        self.slot = slot
        self.client = client        # cluster scope: where the buckets are (None: this worker's scope)
        self.cluster = client is not None
        self.seen = -1
        self.intervals: Dict[str, float] = {}
        self.next_at: Dict[str, float] = {}

    def interval(self, name: str) -> Optional[float]:
        """Seconds between starts of task `name` (None: not limited), from the shared table."""
        seq = self.region.seq()
        if seq != self.seen:
            table = self.table.read()
            if table is not None:
                self.seen, self.intervals = seq, table
        return self.intervals.get(name)

    def reserve(self, name: str, queue: str, key: Optional[str] = None) -> Optional[float]:
        """Cluster scope: None when task `name` may start now, else the start (epoch s, Redis's clock)
        reserved for it. One round trip, for limited tasks only."""
        interval = self.interval(name)
        if not interval:
            return None
        start, now = SCRIPTS(self.client, "reserve", [keys.rate_bucket(queue, name, key)],
                             [max(1, round(interval * 1000))])
        return None if int(start) <= int(now) else int(start) / 1000.0

    def acquire(self, name: str, batch: Any = None, before_wait: Optional[Callable[[], None]] = None) -> None:
        """Worker scope: wait until task `name` may start in this process. Before a wait, `before_wait()`
        runs and `batch` is flushed, so what earlier tasks wrote does not wait with this one."""
        interval = self.interval(name)
        if not interval:
            return
        now = time.monotonic()
        at = self.next_at.get(name, 0.0)
        if at > now:
            if before_wait is not None:
                before_wait()
            if batch is not None:
                batch.flush()  # what earlier tasks wrote must not wait with us
            while True:
                left = at - time.monotonic()
                if left <= 0 or (self.slot is not None and self.slot.stop_requested()):
                    break
                time.sleep(min(left, 0.1))
            now = time.monotonic()
        self.next_at[name] = max(now, at) + interval
