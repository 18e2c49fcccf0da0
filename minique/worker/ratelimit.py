"""Rate limits (Celery's "10/s", "100/m", "1000/h"; a bare number is per second).

`worker_rate_limit_scope = "cluster"` (the default): a task's limit holds across every worker and
host. Before a limited task runs, its pool process reserves the task's next start in Redis
(`ratelimit_lua/reserve.lua`: starts at least 1/rate apart, per task name whatever its queue, and
per `rate_limit_key` when one is given). A start that is due now runs; a later one is the task's own:
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
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Optional, Tuple

from .. import keys, serializers
from ..lua import Scripts
from .seqlock import SeqLock

log = logging.getLogger("minique.worker")
SCRIPTS = Scripts(Path(__file__).parent / "ratelimit_lua")
SCOPES = ("cluster", "worker")
GRANT_SPAN = 0.01   # starts closer together than this (a limit far above the rate) are reserved in batches
GRANT_MAX = 64      # ... of at most this many
GRANT_FRESH = 0.01  # seconds a start reserved ahead may be late and still be used
GRANT_EARLY = 0.001  # ... or early (rather than parking a task for less than this)
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
        self.grants: Dict[Tuple[str, Optional[str]], Deque[float]] = {}  # cluster scope: starts reserved ahead

    def interval(self, name: str) -> Optional[float]:
        """Seconds between starts of task `name` (None: not limited), from the shared table."""
        seq = self.region.seq()
        if seq != self.seen:
            table = self.table.read()
            if table is not None:
                self.seen, self.intervals = seq, table
        return self.intervals.get(name)

    def reserve(self, name: str, key: Optional[str] = None) -> Optional[float]:
        """Cluster scope: None when task `name` may start now, else the start (epoch s, Redis's clock)
        reserved for it. A round trip for limited tasks only, and not for each of them when the limit is
        far above the rate: starts less than GRANT_SPAN apart are reserved several at once and used here
        while fresh (a start not used in time is left unused: the limit is never exceeded by it)."""
        interval = self.interval(name)
        if not interval:
            return None
        now = time.time()
        held = self.grants.get((name, key))
        while held:
            start = held.popleft()
            if start >= now - GRANT_FRESH:
                return None if start <= now + GRANT_EARLY else start
        count = max(1, min(GRANT_MAX, int(GRANT_SPAN / interval)))
        first, server_now = SCRIPTS(self.client, "reserve", [keys.rate_bucket(name, key)],
                                    [max(1, round(interval * 1_000_000)), count])
        first_s = int(first) / 1_000_000
        if count > 1:
            self.grants[(name, key)] = deque(first_s + i * interval for i in range(1, count))
        return None if int(first) <= int(server_now) else first_s

    def acquire(self, name: str, batch: Any = None, before_wait: Optional[Callable[[], None]] = None,
                sleep: bool = True) -> float:
        """Worker scope: wait until task `name` may start in this process. Before a wait, `before_wait()`
        runs and `batch` is flushed, so what earlier tasks wrote does not wait with this one. With
        `sleep=False` (the asyncio pool, whose loop must not block), the start is reserved and the seconds
        left until it returned instead: the caller waits."""
        interval = self.interval(name)
        if not interval:
            return 0.0
        now = time.monotonic()
        at = self.next_at.get(name, 0.0)
        if at > now and not sleep:
            self.next_at[name] = at + interval
            return at - now
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
        return 0.0
