"""Issue 20's scenarios, each through several real workers: a rate limit across workers and queues, a
concurrency limit with a worker killed mid-task, a unique task sent 100 times from 10 threads, and a pause
while tasks flow."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from minique import keys
from procs import drop_testapp, import_testapp, wait_for


@pytest.fixture
def rl(redis_url, monkeypatch):
    rlapp = import_testapp(monkeypatch, redis_url, "rlapp")
    yield rlapp
    drop_testapp(rlapp)


def _rows(redis_client, key):
    return [json.loads(x) for x in redis_client.lrange(key, 0, -1)]


def test_a_rate_limit_across_three_workers_and_two_queues(procs, rl, redis_client):
    """10/s for rlapp.paced, sent to two queues, three workers reading both: in any 1 s window at most 10
    starts are reserved (+1: a window holds both ends), each starts no earlier than its reservation, and
    a task of another name on the same queues is not held up behind them."""
    for _ in range(3):
        procs.worker("-c", "2", "-Q", "default,other", app="rlapp")
    limited = [rl.paced.apply_async(("fc:paced", i), queue=("default", "other")[i % 2]) for i in range(40)]
    free = [rl.flow.apply_async(("fc:free", i), queue=("default", "other")[i % 2]) for i in range(10)]
    assert sorted(r.get(timeout=15) for r in free) == list(range(10))
    assert sorted(r.get(timeout=30) for r in limited) == list(range(40))
    rows = _rows(redis_client, "fc:paced")
    reserved = sorted(r[2] for r in rows)
    assert all(start >= res - 0.002 for _, start, res in rows)  # nobody ran before its reserved start
    for i, t in enumerate(reserved):
        in_window = sum(1 for u in reserved[i:] if u < t + 1.0)
        assert in_window <= 11, (t, in_window)
    assert reserved[-1] - reserved[0] >= 3.9 - 0.05  # 40 starts at 10/s
    # the free tasks all ended before the limited backlog did (no head-of-line blocking)
    assert max(r[1] for r in _rows(redis_client, "fc:free")) < max(r[1] for r in rows)


def test_a_concurrency_limit_with_a_worker_killed_mid_task(procs, rl, redis_client):
    """2 at once across three workers; a whole worker killed (-9) while it runs one: its slot stays taken
    until its lease ends (visibility_timeout), then the next waiting task runs; never more than 2 live."""
    settings = json.dumps({"broker_transport_options": {"visibility_timeout": 5}})
    workers = [procs.worker("-c", "1", "-O", "fair", app="rlapp", settings=settings) for _ in range(3)]
    results = [rl.export.delay("fc4", "fc4:gate") for _ in range(4)]
    wait_for(lambda: redis_client.llen("fc4:pids") == 2, 10, "two runs")
    slots = keys.concurrency("default", "rlapp.export")
    wait_for(lambda: redis_client.llen(slots + ":waiting") == 2, 10, "two waiting")
    victim_pid = int(redis_client.lindex("fc4:pids", 0))
    victim = next(w for w in workers if victim_pid in w.children())
    running = {m.decode(): s for m, s in redis_client.zrange(slots, 0, -1, withscores=True)}
    for pid in [victim.pid, *victim.children()]:
        os.kill(pid, signal.SIGKILL)
    victim.wait(10)
    live_pid = int(redis_client.lindex("fc4:pids", 1))
    # the live run ends (its own gate: a killed process's blocked read could still take a shared one)
    redis_client.rpush(f"fc4:gate:{live_pid}", 1)
    wait_for(lambda: redis_client.llen("fc4:pids") == 3, 10, "a third run")
    holders = {m.decode() for m in redis_client.zrange(slots, 0, -1)}
    [dead_id] = holders & set(running)  # the killed run still holds its slot: 2 held, 1 of them live
    assert len(holders) == 2
    dead_lease_end = running[dead_id] / 1000
    wait_for(lambda: redis_client.llen("fc4:pids") == 4, 15, "the fourth, once the dead run's lease ended")
    fourth_at = time.time()
    assert dead_lease_end - 0.05 <= fourth_at <= dead_lease_end + 5  # not before; soon after
    redis_client.rpush("fc4:gate", 1, 1, 1)
    alive = [r for r in results if r.id != dead_id]  # (the killed one was acked early: it stays STARTED)
    assert [r.get(timeout=15) for r in alive] and all(r.successful() for r in alive)


def test_a_unique_task_sent_100_times_from_10_threads_runs_once(procs, rl, redis_client):
    procs.worker("-c", "2", app="rlapp")
    ids, barrier = [], threading.Barrier(10)

    def send():
        barrier.wait()
        for _ in range(10):
            ids.append(rl.sync_account.delay("hooli", "fc:uniq-gate").id)

    threads = [threading.Thread(target=send) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(ids) == 100 and len(set(ids)) == 1
    assert int(redis_client.hget(keys.DEDUPLICATED, "rlapp.sync_account")) == 99  # (minique_tasks_deduplicated)
    redis_client.rpush("fc:uniq-gate", 1)
    assert rl.app.AsyncResult(ids[0]).get(timeout=10) == "hooli"
    assert redis_client.llen("uniq:ran:hooli") == 1


def test_pause_while_tasks_flow(procs, rl, redis_client):
    """Tasks sent all along; pause, then resume: no task starts on the paused queue in between (those a
    process had reserved go back), and every task sent runs exactly once."""
    worker = procs.worker("-c", "2", "--prefetch-multiplier", "4", app="rlapp")
    stop, sent = threading.Event(), []

    def send():
        i = 0
        while not stop.is_set():
            sent.append(rl.flow.delay("fc:flow", i).id)
            i += 1
            time.sleep(0.005)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_for(lambda: redis_client.llen("fc:flow") >= 20, 10, "tasks flowing")
        rl.app.control.pause("default", destination=[worker.hostname], reply=True, timeout=5)
        paused_at = time.time()
        wait_for(lambda: len(sent) >= 150, 10, "more tasks sent while paused")
        resumed_at = time.time()
        rl.app.control.resume("default", destination=[worker.hostname], reply=True, timeout=5)
    finally:
        stop.set()
        sender.join(10)
    wait_for(lambda: redis_client.llen("fc:flow") == len(sent), 20, "every task to run")
    rows = _rows(redis_client, "fc:flow")
    started_while_paused = [r for r in rows if paused_at + 0.005 < r[1] < resumed_at]
    assert started_while_paused == []
    assert sorted(r[0] for r in rows) == list(range(len(sent)))  # each once, none lost
