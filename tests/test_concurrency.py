"""Concurrency limits (issue 20): at most N runs at once across workers, per key when asked; a task over
its limit waits in the delayed set (no process holds it) and runs as soon as a slot is given back, also
when the run that held it died with its pool process. (Workers run with -O fair: a process blocked in a
long task must not sit on prefetched messages the test waits to see handled.)"""
from __future__ import annotations

import os
import signal

import pytest

from minique import keys
from procs import wait_for


@pytest.fixture
def rl(redis_url, monkeypatch):
    from procs import drop_testapp, import_testapp
    rlapp = import_testapp(monkeypatch, redis_url, "rlapp")
    yield rlapp
    drop_testapp(rlapp)


def test_at_most_n_at_once_across_two_workers(procs, rl, redis_client):
    for _ in range(2):
        procs.worker("-c", "2", "-O", "fair", app="rlapp")
    results = [rl.export.delay("c1", "c1:gate") for _ in range(5)]
    wait_for(lambda: redis_client.llen("c1:seen") == 2, 10, "two runs")
    slots = keys.concurrency("default", "rlapp.export")
    wait_for(lambda: redis_client.llen(slots + ":waiting") == 3, 10, "three waiting for a slot")
    assert redis_client.zcard(slots) == 2 and redis_client.zcard(keys.delayed("default")) == 3
    scheduled = [e for reply in rl.app.control.inspect(timeout=2).scheduled().values() for e in reply]
    assert len(scheduled) == 6 and {e["waiting_for"] for e in scheduled} == {"a concurrency slot"}  # (2 workers)
    redis_client.rpush("c1:gate", *[1] * 5)
    assert all(r.get(timeout=20) in (1, 2) for r in results) and redis_client.llen("c1:seen") == 5
    assert max(int(x) for x in redis_client.lrange("c1:seen", 0, -1)) == 2  # never more than two at once
    assert redis_client.zcard(slots) == 0


def test_a_limit_per_key(procs, rl, redis_client):
    procs.worker("-c", "3", "-O", "fair", app="rlapp")
    a1 = rl.sync_customer.delay("a", "c2:order", "c2:gate")
    b1 = rl.sync_customer.delay("b", "c2:order", "c2:gate")
    a2 = rl.sync_customer.delay("a", "c2:order", "c2:gate")
    wait_for(lambda: redis_client.llen("c2:order") == 2, 10, "one run per customer")
    wait_for(lambda: redis_client.llen(keys.concurrency("default", "rlapp.sync_customer", "a") + ":waiting") == 1,
             10, "customer a's second call waiting")
    assert sorted(x.decode() for x in redis_client.lrange("c2:order", 0, -1)) == ["a", "b"]
    redis_client.rpush("c2:gate", 1, 1, 1)
    assert [r.get(timeout=20) for r in (a1, b1, a2)] == ["a", "b", "a"]


def test_a_slot_held_by_a_killed_process_is_given_back(procs, rl, redis_client):
    procs.worker("-c", "3", "-O", "fair", app="rlapp")
    results = [rl.export.delay("c3", "c3:gate") for _ in range(3)]
    wait_for(lambda: redis_client.llen("c3:seen") == 2, 10, "two runs")
    slots = keys.concurrency("default", "rlapp.export")
    wait_for(lambda: redis_client.llen(slots + ":waiting") == 1, 10, "the third waiting")
    victim = int(redis_client.lindex("c3:pids", 0))
    os.kill(victim, signal.SIGKILL)  # its run fails (WorkerLostError): the parent gives its slot back
    wait_for(lambda: redis_client.llen("c3:seen") == 3, 15, "the third to run in the freed slot")
    redis_client.rpush("c3:gate", 1, 1, 1)
    outcomes = []
    for r in results:
        try:
            outcomes.append(r.get(timeout=20))
        except Exception as exc:  # noqa: BLE001 - the killed one
            outcomes.append(type(exc).__name__)
    assert outcomes.count("WorkerLostError") == 1
    assert redis_client.zcard(slots) == 0
