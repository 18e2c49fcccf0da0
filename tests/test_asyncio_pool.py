"""The asyncio pool (-P asyncio, minique/worker/eventloop.py) through real workers: many tasks at once per
process, no more taken than it can start, plain def tasks in threads beside the loop, update_state, time
limits and terminate that cancel one task (not the process), a blocked loop replaced by the parent, a
killed process whose every task is settled, warm shutdown, retries, canvases, recycling."""
from __future__ import annotations

import os
import signal

import pytest

from minique import chain, chord, group, keys, serializers
from minique.exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded, WorkerLostError
from procs import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ap(redis_url, monkeypatch):
    from procs import drop_testapp, import_testapp
    mod = import_testapp(monkeypatch, redis_url, "asyncpool")
    yield mod
    drop_testapp(mod)


def _worker(procs, *args):
    return procs.worker("-P", "asyncio", "-c", "1", *args, app="asyncpool")


def _started(redis_client, key, n, timeout=30.0):
    wait_for(lambda: redis_client.llen(f"{key}:started") >= n, timeout, f"{n} task(s) of {key} to start")


def test_one_process_runs_many_tasks_at_once(procs, ap, redis_client):
    worker = _worker(procs, "--async-concurrency", "100")
    assert "pool: asyncio x 1, 100 tasks at once per process, messages taken for free places only" in worker.log()
    results = [ap.hold.delay("many", "g:many") for _ in range(100)]
    _started(redis_client, "many", 100)  # every one of them waits on the gate: all 100 run at once
    active = ap.app.control.inspect(timeout=2).active()
    assert sum(len(tasks) for tasks in active.values()) == 100
    (stats,) = ap.app.control.inspect(timeout=2).stats().values()
    assert stats["pool"]["implementation"] == "asyncio" and stats["pool"]["async-concurrency"] == 100
    assert stats["prefetch_count"] == 100  # what it may hold: its places, not a prefetch multiplier's count
    def beat():  # (the heartbeat the dashboard shows: written every worker_heartbeat_interval)
        info = serializers.unpack(redis_client.hget("minique:workers", worker.hostname))
        return info["pool"], info["concurrency"], info["places"], info["active"]
    wait_for(lambda: beat() == ("asyncio", 1, 100, 100), 10, "a heartbeat with the 100 running")
    redis_client.rpush("g:many", 1)
    values = [r.get(timeout=30) for r in results]
    assert [v[0] for v in values] == [r.id for r in results]  # each body saw its own request
    assert len({v[1] for v in values}) == 1  # one process


def test_a_process_takes_no_more_messages_than_it_can_start(procs, ap, redis_client):
    _worker(procs, "--async-concurrency", "5")
    results = [ap.hold.delay("few", "g:few") for _ in range(20)]
    _started(redis_client, "few", 5)
    wait_for(lambda: ap.app.broker.waiting(["default"]) == 15, 5, "the early acks of the 5 running")
    # the 15 others wait in the queue, not taken (free for any other worker), and nothing else started
    held = sum(ap.app.broker_client.xpending(k, keys.GROUP)["pending"] for k in keys.queue_priorities("default"))
    assert held == 0 and redis_client.llen("few:started") == 5
    redis_client.rpush("g:few", 1)
    assert len([r.get(timeout=30) for r in results]) == 20


def test_plain_def_tasks_run_in_threads_beside_the_loop(procs, ap, redis_client):
    _worker(procs, "--async-concurrency", "10")
    blocking = [ap.plain_hold.delay("mix", "g:plain") for _ in range(2)]
    _started(redis_client, "mix", 2)
    # the plain tasks block their threads; the loop still runs async tasks to their end
    assert [ap.double.delay(i).get(timeout=10) for i in range(5)] == [0, 2, 4, 6, 8]
    redis_client.rpush("g:plain", 1)
    assert [r.get(timeout=30) for r in blocking] == ["plain done"] * 2


def test_update_state_from_async_and_plain_bodies(procs, ap, redis_client):
    _worker(procs)
    a = ap.progress.delay("prog", "g:prog")
    b = ap.plain_progress.delay("prog", "g:prog")
    _started(redis_client, "prog", 2)
    wait_for(lambda: a.state == "PROGRESS" and b.state == "PROGRESS", 10, "PROGRESS states")
    assert a.info == {"step": 1} and b.info == {"step": "thread"}
    redis_client.rpush("g:prog", 1)
    assert a.get(timeout=10) == "finished" and b.get(timeout=10) == "plain done"


def test_time_limits_and_terminate_cancel_one_task_not_the_process(procs, ap, redis_client):
    _worker(procs)
    bystander = ap.hold.delay("lim", "g:lim")
    _started(redis_client, "lim", 1)
    soft = ap.soft_limited.delay("lim:clean")
    with pytest.raises(SoftTimeLimitExceeded):
        soft.get(timeout=10)
    assert redis_client.lrange("lim:clean", 0, -1) == [b"cleaned up"]  # it cleaned up at its await point
    hard = ap.hard_limited.delay()
    with pytest.raises(TimeLimitExceeded):
        hard.get(timeout=10)
    doomed = ap.hold.delay("lim", "g:never")
    _started(redis_client, "lim", 2)
    ap.app.control.revoke(doomed.id, terminate=True)
    with pytest.raises(TaskRevokedError):
        doomed.get(timeout=10)
    assert doomed.state == "REVOKED"
    redis_client.rpush("g:lim", 1)
    own_id, pid = bystander.get(timeout=10)  # it ran on through all of that, in the same process
    assert ap.pid.delay().get(timeout=10) == pid


def test_a_loop_blocked_past_a_hard_limit_has_its_process_replaced(procs, ap, redis_client):
    worker = _worker(procs)
    first_pid = ap.pid.delay().get(timeout=10)
    blocker = ap.blocks_the_loop.delay("blk")
    with pytest.raises(TimeLimitExceeded):
        blocker.get(timeout=15)
    assert "hit its hard time limit" in worker.log()
    assert ap.pid.delay().get(timeout=15) != first_pid  # a new process serves on


def test_a_killed_process_has_every_task_it_ran_settled(procs, ap, redis_client):
    worker = _worker(procs, "--async-concurrency", "20")
    early = [ap.hold.delay("kill", "g:kill") for _ in range(5)]
    late = [ap.hold_late.delay("kill", "g:kill") for _ in range(5)]
    _started(redis_client, "kill", 10)
    child = worker.children()[0]
    os.kill(child, signal.SIGKILL)
    for r in early:  # early acks: they were running, they are lost, and say so
        with pytest.raises(WorkerLostError):
            r.get(timeout=20)
    redis_client.rpush("g:kill", 1)  # acks_late + reject_on_worker_lost: run again by the new process
    assert len({r.get(timeout=30) for r in late} - {child}) >= 1
    assert all(r.state == "SUCCESS" for r in late)


def test_warm_shutdown_lets_running_coroutines_finish(procs, ap, redis_client):
    worker = _worker(procs)
    running = [ap.hold.delay("warm", "g:warm") for _ in range(10)]
    _started(redis_client, "warm", 10)
    worker.signal(signal.SIGTERM)
    wait_for(lambda: "Warm shutdown" in worker.log(), 10, "the warm shutdown to begin")
    later = ap.double.delay(1)  # sent during the shutdown: not taken
    redis_client.rpush("g:warm", 1)
    assert len([r.get(timeout=20) for r in running]) == 10
    assert worker.wait(timeout=20) == 0
    assert later.state == "PENDING"


def test_retries_canvases_and_recycling(procs, ap, redis_client):
    _worker(procs, "--max-tasks-per-child", "10")
    assert ap.flaky.delay("retry:flaky").get(timeout=10) == "third time"
    assert chain(ap.double.s(1), ap.double.s(), ap.double.s()).delay().get(timeout=10) == 8
    assert chord(group(ap.double.s(i) for i in range(10)), ap.total.s()).delay().get(timeout=20) == 90
    pids = {r.get(timeout=20) for r in [ap.pid.delay() for _ in range(25)]}
    assert len(pids) >= 2  # a process that ran 10 tasks was replaced


def test_a_worker_scope_rate_limit_waits_without_blocking_the_loop(procs, ap, redis_client):
    procs.worker("-P", "asyncio", "-c", "1", app="asyncpool", settings='{"worker_rate_limit_scope": "worker"}')
    limited = [ap.limited.delay() for _ in range(5)]
    assert ap.double.delay(2).get(timeout=10) == 4  # served while the limited ones wait their turns
    starts = sorted(r.get(timeout=20) for r in limited)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.19, gaps  # 5/s: one start every 0.2 s in this process (less a clock's grain)


def test_hooks_and_signals_see_their_own_request_among_many(procs, ap, redis_client):
    _worker(procs)
    results = [ap.hooked.delay("hk", "g:hk") for _ in range(20)]
    _started(redis_client, "hk", 20)  # 20 bodies interleave on the loop
    redis_client.rpush("g:hk", 1)
    assert [r.get(timeout=20) for r in results] == [r.id for r in results]
    notes = [n.decode().split("|") for n in redis_client.lrange("hooks", 0, -1)]
    assert sorted(kind for kind, _, _ in notes) == sorted(
        ["before_start", "on_success", "after_return", "task_postrun"] * 20)
    assert all(task_id == current for _, task_id, current in notes)
