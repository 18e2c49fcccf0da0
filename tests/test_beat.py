"""Beat against a real (private) Redis: leader election, exactly-once slots, restarts, the process."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from typing import Any, Callable, List

import pytest
import redis

from minique import Minique, crontab, keys, message as message_mod
from minique.beat import Beat

STREAM = keys.queue("default", 0)
LOCK = keys.lock("beat")


def make_app(redis_url: str, entries: dict, **conf: Any) -> Minique:
    app = Minique("t", broker=redis_url)
    app.conf.beat_schedule = entries
    app.conf.update(conf)
    return app


def every(seconds: float, task: str = "t.tick") -> dict:
    return {"task": task, "schedule": seconds}


def sent(client: redis.Redis) -> List[message_mod.Message]:
    """The messages in the default queue's stream, oldest first."""
    return [message_mod.decode(fields[b"m"]) for _, fields in client.xrange(STREAM)]


def slot_ms(msg: message_mod.Message) -> int:
    return int(msg.headers["beat_key"].rsplit(":", 1)[1])


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll external state (Redis) until ``cond`` holds; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Runner:
    """A Beat running its loop in a thread."""

    def __init__(self, beat: Beat):
        self.beat = beat
        self.thread = threading.Thread(target=beat.run, name=beat.hostname, daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.beat.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.beat.hostname} did not stop"


@pytest.fixture
def runners():
    started: List[Runner] = []
    yield lambda beat: started.append(Runner(beat)) or started[-1]
    for r in started:
        r.beat.stop()
    for r in started:
        r.thread.join(5)


@pytest.mark.timeout(30)
def test_two_beats_side_by_side_fire_each_slot_once(redis_url, redis_client, runners, caplog):
    caplog.set_level(logging.INFO, logger="minique.beat")
    # missed policy "all": a leader that a loaded machine holds up for over a second still sends the
    # slots it is late for, so the grid check below stays exact (the policies are tested elsewhere)
    beats = [Beat(make_app(redis_url, {"tick": every(1.0)}, beat_lease_seconds=3.0, beat_missed_policy="all"),
                  hostname=f"b{i}") for i in range(2)]
    started = time.monotonic()
    a, b = runners(beats[0]), runners(beats[1])
    wait_until(lambda: redis_client.xlen(STREAM) >= 5, 30, "5 runs")  # both beats up all along
    b.stop()  # the standby first, so that it cannot take over at the end
    a.stop()
    elapsed = time.monotonic() - started
    msgs = sent(redis_client)
    ids = [m.id for m in msgs]
    assert len(ids) == len(set(ids)), f"duplicate task ids: {ids}"
    slot_keys = [m.headers["beat_key"] for m in msgs]
    assert len(slot_keys) == len(set(slot_keys)), f"a slot sent twice: {slot_keys}"
    assert all(uuid.UUID(i).version == 4 for i in ids)
    # one run per second of the grid: at most one more than the whole seconds that passed (the first
    # run goes at once), and one more for the slot that may fall due while the beats stop
    assert 5 <= len(ids) <= int(elapsed) + 2, (elapsed, ids)
    assert all(k.startswith("beat:tick:") and m.task == "t.tick" for k, m in zip(slot_keys, msgs))
    slots = [slot_ms(m) for m in msgs]
    assert [y - x for x, y in zip(slots, slots[1:])] == [1000] * (len(slots) - 1)
    assert float(redis_client.hget(keys.BEAT_LAST, "tick")) * 1000 == pytest.approx(slots[-1], abs=1)
    assert 0 <= float(redis_client.hget(keys.BEAT_LAG, "tick")) < 3  # how late the last run went out
    assert redis_client.get(LOCK) is None  # released on clean exit
    leaders = [r.getMessage() for r in caplog.records if "is now the leader" in r.getMessage()]
    assert len(leaders) == 1, leaders
    assert sum("Scheduler: Sending due task tick (t.tick)" in r.getMessage() for r in caplog.records) == len(ids)


@pytest.mark.timeout(40)
def test_standby_takes_over_when_the_leader_dies(redis_url, redis_client, runners):
    lease = 2.0
    conf = dict(beat_lease_seconds=lease, beat_missed_policy="all")
    first = Beat(make_app(redis_url, {"tick": every(1.0)}, **conf), hostname="first")
    second = Beat(make_app(redis_url, {"tick": every(1.0)}, **conf), hostname="second")
    a = runners(first)
    assert first.leadership.wait(5)
    b = runners(second)
    wait_until(lambda: redis_client.xlen(STREAM) >= 3, 10, "3 runs by the first leader")
    assert not second.is_leader
    first._abandon()  # dies: no release, its lease must run out
    a.thread.join(5)
    died = time.monotonic()
    assert redis_client.get(LOCK).decode() == first.token
    # it takes over when the lease (2 s) runs out; the bound adds 3 s of slack for a loaded machine
    # and stays clear of a standby that did not watch the lease (it would wait for its loop interval,
    # beat_max_loop_interval: 300 s)
    assert second.leadership.wait(lease + 3), "the standby did not take over"
    assert time.monotonic() - died <= lease + 3
    before = redis_client.xlen(STREAM)
    wait_until(lambda: redis_client.xlen(STREAM) >= before + 3, 10, "3 runs by the new leader")
    b.stop()
    msgs = sent(redis_client)
    ids = [m.id for m in msgs]
    assert len(ids) == len(set(ids)), f"duplicate task ids: {ids}"
    slots = [slot_ms(m) for m in msgs]
    assert [y - x for x, y in zip(slots, slots[1:])] == [1000] * (len(slots) - 1), "a slot was lost"


@pytest.mark.timeout(20)
def test_overlapping_leaders_cannot_send_a_slot_twice(redis_url, redis_client):
    """Lease-expiry race: both beats believe they lead and read the same last run."""
    conf = dict(beat_lease_seconds=10.0, beat_missed_policy="all")
    first = Beat(make_app(redis_url, {"tick": every(1.0)}, **conf), hostname="first")
    second = Beat(make_app(redis_url, {"tick": every(1.0)}, **conf), hostname="second")
    first._lease_step()
    redis_client.delete(LOCK)  # as if the first leader's lease had just expired
    second._lease_step()
    assert first.is_leader and second.is_leader
    redis_client.hset(keys.BEAT_LAST, "tick", repr(time.time() - 3.5))  # 3 slots due
    barrier = threading.Barrier(2, timeout=5)
    for beat in (first, second):
        def read_then_meet(names, _read=beat._read_last):
            found = _read(names)
            barrier.wait()  # both decide on the same stale state
            return found
        beat._read_last = read_then_meet
    threads = [threading.Thread(target=beat.tick) for beat in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    ids = [m.id for m in sent(redis_client)]
    assert len(ids) == 3 and len(set(ids)) == 3, ids


@pytest.mark.timeout(20)
def test_restart_does_not_refire_and_picks_up_changes(redis_url, redis_client, runners):
    entries = {"slow": every(30.0, "t.slow"), "hourly": {"task": "t.hourly", "schedule": crontab(minute=0)}}
    first = Beat(make_app(redis_url, entries), hostname="first")
    runner = runners(first)
    wait_until(lambda: redis_client.xlen(STREAM) >= 1, 5, "the first run of 'slow'")
    runner.stop()
    assert [m.task for m in sent(redis_client)] == ["t.slow"]  # the crontab waits for its slot
    assert redis_client.hexists(keys.BEAT_LAST, "hourly")       # ...from a recorded baseline

    again = Beat(make_app(redis_url, entries), hostname="again")
    wait = again.tick()
    assert again.is_leader and 0 < wait <= again.lease
    assert redis_client.xlen(STREAM) == 1, "the restart re-fired a run"
    listed = {name: (task, nxt) for name, task, _, nxt in again.entries()}
    last_slow = float(redis_client.hget(keys.BEAT_LAST, "slow"))
    assert listed["slow"][0] == "t.slow" and listed["slow"][1].timestamp() == pytest.approx(last_slow + 30)
    assert listed["hourly"][1].timestamp() > time.time() and listed["hourly"][1].minute == 0
    again.stop()
    again.run()  # stop already requested: just releases the lease
    assert redis_client.get(LOCK) is None

    changed = {"slow": every(0.01, "t.slow"), "fresh": every(60.0, "t.fresh")}  # "hourly" removed
    third = Beat(make_app(redis_url, changed), hostname="third")
    third.tick()
    assert sorted(m.task for m in sent(redis_client)[1:]) == ["t.fresh", "t.slow"]
    assert not redis_client.hexists(keys.BEAT_LAST, "hourly"), "a removed entry's state stayed behind"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("policy, expected", [("once", 1), ("skip", 0), ("all", 10)])
def test_missed_runs_follow_the_policy(redis_url, redis_client, caplog, policy, expected):
    caplog.set_level(logging.INFO, logger="minique.beat")
    beat = Beat(make_app(redis_url, {"tick": every(1.0)}, beat_missed_policy=policy))
    redis_client.hset(keys.BEAT_LAST, "tick", repr(time.time() - 10.5))  # down for 10 slots
    wait = beat.tick()
    msgs = sent(redis_client)
    assert len(msgs) == expected and len({m.id for m in msgs}) == expected
    assert any("missed 10 runs" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert float(redis_client.hget(keys.BEAT_LAST, "tick")) > time.time() - 1  # the grid moved on
    assert 0 < wait <= 1.0
    assert beat.tick() <= 1.0 and len(sent(redis_client)) == expected  # nothing more at once


@pytest.mark.timeout(20)
def test_options_reach_the_message(redis_url, redis_client):
    entry = {"task": "t.opt", "schedule": 60, "args": [1, 2], "kwargs": {"k": "v"},
             "options": {"queue": "other", "priority": 3, "headers": {"mine": 1}}}
    Beat(make_app(redis_url, {"opt": entry})).tick()
    [(_, fields)] = redis_client.xrange(keys.queue("other", 3))
    msg = message_mod.decode(fields[b"m"])
    assert msg.task == "t.opt" and msg.queue == "other" and uuid.UUID(msg.id).version == 4
    assert msg.headers["mine"] == 1 and msg.headers["beat_key"].startswith("beat:opt:")
    assert entry["options"]["headers"] == {"mine": 1}  # the entry's own options are left as they were
    assert msg.args_kwargs({"json"}) == ([1, 2], {"k": "v"})


@pytest.mark.timeout(20)
def test_stop_wakes_the_loop_at_once(redis_url, redis_client, runners):
    stop = threading.Event()
    app = make_app(redis_url, {"hourly": {"task": "t.h", "schedule": crontab(minute=0)}},
                   beat_lease_seconds=60.0, beat_max_loop_interval=300.0)
    beat = Beat(app, stop_event=stop)
    runner = runners(beat)
    assert beat.leadership.wait(5)
    started = time.monotonic()
    stop.set()
    runner.thread.join(10)
    # a loop that did not wake would sleep until its next lease renewal (a third of the 60 s lease:
    # 20 s); the bound is generous for a loaded machine and clear of that
    assert not runner.thread.is_alive() and time.monotonic() - started < 5.0
    assert redis_client.get(LOCK) is None and not beat.is_leader


@pytest.mark.timeout(30)
def test_beat_process_exits_cleanly_on_sigterm(redis_url, redis_client, tmp_path):
    (tmp_path / "beatapp.py").write_text(textwrap.dedent(f"""
        from minique import Minique
        app = Minique("beatapp", broker={redis_url!r})
        app.conf.beat_schedule = {{"tick": {{"task": "beatapp.tick", "schedule": 0.5}}}}
        app.conf.beat_lease_seconds = 2.0
    """))
    proc = subprocess.Popen([sys.executable, "-m", "minique.beat", "-A", "beatapp", "-l", "INFO"],
                            cwd=tmp_path, env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: redis_client.xlen(STREAM) >= 2 or proc.poll() is not None, 15, "two runs")
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    output = proc.stdout.read()
    assert "Scheduler: Sending due task tick (beatapp.tick)" in output
    assert "is now the leader" in output and "stopped" in output
    assert redis_client.get(LOCK) is None
