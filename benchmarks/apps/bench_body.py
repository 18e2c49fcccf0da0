"""What the benchmark tasks do, shared by the minique and the Celery bench apps.

Imports only the standard library and redis-py, so it runs in either environment.

`tick()` is the no-op task body: it appends one byte to BENCH_COUNT_FILE (O_APPEND,
so concurrent appends from every pool process land whole). The runner watches that
file's size to see the first task run, each tenth of the drain, and the last one.
It costs one write(2) of a byte, about a microsecond, and no Redis command, so what
is measured is the queue, not the benchmark. (A Redis INCR per task, the obvious
alternative, is a network round trip per task: about a third of a pool process's
time at these rates; `incr()` keeps it for the reference figure.)

The INCR goes through a connection class the round-trip counter (rtcount) does not
count, so counted round trips are the queue's own.
"""
from __future__ import annotations

import os

import redis

COUNT = "bench:count"

_fd = -1
_fd_pid = 0
_client = None
_client_pid = 0


def tick() -> None:
    """One unit of observable no-op work: one byte appended to the count file."""
    global _fd, _fd_pid
    if _fd_pid != os.getpid():
        _fd = os.open(os.environ["BENCH_COUNT_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fd_pid = os.getpid()
    os.write(_fd, b"x")


def client() -> "redis.Redis":
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        from .rtcount import uncounted_connection_class
        pool = redis.ConnectionPool.from_url(os.environ["BENCH_REDIS_URL"],
                                             connection_class=uncounted_connection_class())
        _client = redis.Redis(connection_pool=pool)
        _client_pid = os.getpid()
    return _client


def incr() -> None:
    """The reference body: a Redis INCR per task (one round trip), then the tick."""
    client().incr(COUNT)
    tick()
