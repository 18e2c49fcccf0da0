"""Cluster-wide rate limits (worker_rate_limit_scope = "cluster", the default): one limit across workers,
enforced by parking the message until its reserved start, never by sleeping with it."""
from __future__ import annotations

import json

import pytest

from minique import Minique
from minique.worker.ratelimit import RateLimiter, RateLimitTable


@pytest.fixture
def client(redis_url):
    app = Minique("client", broker=redis_url)
    yield app
    app.close()


def starts(redis_client, key):
    return [tuple(json.loads(x)) for x in redis_client.lrange(key, 0, -1)]


def test_reservations_are_spaced_across_limiters_and_per_key(redis_client):
    """Two limiters (two processes, or two hosts) share one bucket per task (and key)."""
    table = RateLimitTable()
    table.write({"t": 0.5})  # 2/s
    one, two = RateLimiter(table, client=redis_client), RateLimiter(table, client=redis_client)
    assert one.reserve("t") is None              # the first start is due now
    later = [two.reserve("t"), one.reserve("t"), two.reserve("t")]
    assert all(at is not None for at in later)
    assert [round(b - a, 3) for a, b in zip(later, later[1:])] == [0.5, 0.5]
    assert one.reserve("t", key="acme") is None    # another key, another bucket
    assert one.reserve("unlimited") is None
    assert redis_client.pttl("minique:rl:t") > 1000  # it expires once the reservations are past


def test_one_limit_across_two_workers_without_sleeping(procs, client, redis_client):
    """5/s across two workers of two processes: 10 starts take at least 1.8 s (at 5/s per worker they
    would take 0.9 s). A task without a limit sent after them is not held up behind them."""
    for _ in range(2):
        procs.worker("-c", "2", app="rlapp")
    limited = [client.send_task("rlapp.limited", ("rl:starts", i)) for i in range(10)]
    free = client.send_task("rlapp.free", ("rl:free", "f"))
    assert free.get(timeout=10) == "f"
    assert sorted(r.get(timeout=20) for r in limited) == list(range(10))
    times = sorted(t for _, t in starts(redis_client, "rl:starts"))
    assert times[-1] - times[0] >= 1.8 - 0.05, times
    # no head-of-line blocking: the free task started before the last limited ones
    assert starts(redis_client, "rl:free")[0][1] < times[-2]


def test_a_limit_per_key(procs, client, redis_client):
    """rate_limit_key: 2/s per customer. Each customer's starts are 0.5 s apart; customers do not wait
    for each other (the first start of each is at once)."""
    procs.worker("-c", "2", app="rlapp")
    results = [client.send_task("rlapp.per_customer", ("rl:keys", c)) for c in ("a", "b", "a", "b", "a")]
    assert [r.get(timeout=20) for r in results] == ["a", "b", "a", "b", "a"]
    seen = sorted(starts(redis_client, "rl:keys"), key=lambda s: s[1])
    assert {seen[0][0], seen[1][0]} == {"a", "b"}   # one of each first
    # each start is at or after the one it reserved (0.5 s after the previous reservation): the span of
    # customer a's three starts is at least 1 s, less the first start's own latency after its reservation
    # (pairwise gaps may be shorter: a start that came back late from the delayed set narrows the next gap)
    a = [t for c, t in seen if c == "a"]
    assert a[-1] - a[0] >= 1.0 - 0.1, a
    # apply_async(rate_limit_key=...) counts per that key instead
    msg = client.build_message("rlapp.limited", ("k", 1), options={"rate_limit_key": "tenant-7"})
    assert msg.headers == {"rate_limit_key": "tenant-7"}


def test_the_worker_scope_keeps_celerys_per_worker_limit(procs, client, redis_client):
    """worker_rate_limit_scope = "worker": each worker has the whole limit (5/s), and nothing is parked."""
    procs.worker("-c", "1", app="rlapp", settings=json.dumps({"worker_rate_limit_scope": "worker"}))
    results = [client.send_task("rlapp.limited", ("rl:w", i)) for i in range(3)]
    assert [r.get(timeout=10) for r in results] == [0, 1, 2]
    times = [t for _, t in starts(redis_client, "rl:w")]
    assert all(y - x >= 0.2 - 0.05 for x, y in zip(times, times[1:])), times
    assert redis_client.zcard("minique:{default}:delayed") == 0
    assert not redis_client.exists("minique:rl:rlapp.limited")


def test_a_limit_far_above_the_rate_reserves_starts_in_batches(redis_client):
    """1,000,000/s: starts 1 µs apart are reserved 64 at a time (GRANT_SPAN), so a limited task does not cost
    a round trip each; all may start at once. A limit of 2/s still reserves one start at a time."""
    table = RateLimitTable()
    table.write({"fast": 1e-6, "slow": 0.5})
    lim = RateLimiter(table, client=redis_client)
    assert all(lim.reserve("fast") is None for _ in range(100))
    assert 0 < len(lim.grants[("fast", None)]) < 64
    free = int(redis_client.get("minique:rl:fast"))
    assert all(lim.reserve("fast") is None for _ in range(len(lim.grants[("fast", None)])))
    assert int(redis_client.get("minique:rl:fast")) == free  # those came from the batch: no round trip
    assert lim.reserve("slow") is None and ("slow", None) not in lim.grants
