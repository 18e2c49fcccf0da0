"""What the benchmark tasks do, shared by the minique and the Celery bench apps.

Imports only the standard library and redis-py, so it runs in either environment.
A counted task INCRs `bench:count`; the first one records `bench:t_first` and the
one that reaches BENCH_TARGET records `bench:t_last` and pushes `bench:done` (wall clock, one machine), so
a drain is timed from its first task to its last without polling.

The task body's own Redis calls go through a connection class the round-trip
counter (rtcount) does not count, so the counts are the queue's alone.
"""
from __future__ import annotations

import os
import time

import redis

COUNT = "bench:count"
T_FIRST = "bench:t_first"
T_LAST = "bench:t_last"
DONE = "bench:done"       # gets one element when the target is reached (the runner BLPOPs it)

_client = None
_client_pid = 0
_target = None
_step = 0
MARK = "bench:t:"         # bench:t:<n>: when the n-th task ran, every target/10 tasks


def client() -> "redis.Redis":
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        from .rtcount import uncounted_connection_class
        url = os.environ["BENCH_REDIS_URL"]
        pool = redis.ConnectionPool.from_url(url, connection_class=uncounted_connection_class())
        _client = redis.Redis(connection_pool=pool)
        _client_pid = os.getpid()
    return _client


def target() -> int:
    global _target, _step
    if _target is None:
        _target = int(os.environ.get("BENCH_TARGET") or 0)
        _step = _target // 10 if _target >= 100 else 0
    return _target


def count_one() -> None:
    """One unit of no-op work the benchmark can observe: INCR, plus a timestamp at the ends."""
    r = client()
    n = r.incr(COUNT)
    if n == 1:
        r.set(T_FIRST, repr(time.time()))
    last = target()
    if _step and n % _step == 0:
        r.set(MARK + str(n), repr(time.time()))
    if n == last:
        r.set(T_LAST, repr(time.time()))
        r.rpush(DONE, n)
