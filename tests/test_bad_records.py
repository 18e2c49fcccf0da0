"""One bad record never takes anything down (issue 16): the brokers' Lua scripts, the worker parent's
loop, its control thread, inspect's display of bodies and beat meet malformed data in Redis.

Each bad record ends in the dead-letter stream with its reason (or is skipped and logged, where it is
not a message: a control message, a beat entry's stored last run); everything next to it goes on.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import time

import pytest
import redis

from minique import Minique, keys, serializers
from minique.beat import Beat
from minique.brokers import ListsBroker, StreamsBroker, base
from minique.exceptions import DecodeError, TaskRevokedError
from minique.message import make
from procs import wait_for

DLQ = keys.DLQ


def dead_letters(client):
    """[(m, reason, task_id)] of the dead-letter stream, oldest first."""
    return [(f[b"m"], f[b"reason"].decode(), f[b"task_id"].decode()) for _, f in client.xrange(DLQ)]


def malformed(client):
    return [d for d in dead_letters(client) if d[1].startswith("malformed record: ")]


def _broker(cls, redis_url):
    """A broker of `cls` on queue "q" (claims expire after 0.5 s, two deliveries at most), and its client."""
    client = redis.Redis.from_url(redis_url)
    b = cls(client, visibility_timeout=0.5, max_deliveries=2)
    b.ensure_queues(["q"])
    return b, client


@pytest.fixture(params=["streams", "lists"])
def broker(request, redis_url):
    b, client = _broker(StreamsBroker if request.param == "streams" else ListsBroker, redis_url)
    yield b
    client.close()


@pytest.fixture
def streams(redis_url):
    b, client = _broker(StreamsBroker, redis_url)
    yield b
    client.close()


@pytest.fixture
def lists(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield ListsBroker(client, visibility_timeout=60, max_deliveries=2)  # claims expire only when the test says
    client.close()


def settings(**more):
    return json.dumps(more)


# --- 1. the Lua scripts ---------------------------------------------------------------------------

def test_move_due_dead_letters_members_without_a_priority_digit_and_moves_the_rest(broker):
    client = broker.client
    past = time.time() - 1
    broker.send_later(client, "q", 3, b"good-3", past)
    broker.send_later(client, "q", 0, b"good-0", past)
    raw = make("t.x", (1,), task_id="raw-id").encode()  # a message ZADDed without its priority digit
    delayed = keys.delayed("q")
    client.zadd(delayed, {b"": 1, b"x-no-digit": 2, raw: 3})
    moved, _ = broker.move_due(["q"])
    assert moved == 2
    assert sorted(d.data for d in broker.fetch("c", ["q"], 10, 0)) == [b"good-0", b"good-3"]
    assert client.zcard(delayed) == 0
    found = malformed(client)
    assert sorted(m for m, _, _ in found) == sorted([b"", b"x-no-digit", raw])  # the member as it was
    assert all("delayed-set member without its priority digit" in reason for _, reason, _ in found)
    assert {m: task_id for m, _, task_id in found}[raw] == "raw-id"
    assert broker.move_due(["q"]) == (0, None) and len(dead_letters(client)) == 3  # once each


def test_move_due_sets_a_malformed_member_aside_until_its_caller_removes_it(broker):
    """A caller that runs the script and dies before the dead letter loses nothing: the member stays in
    the delayed set, out of racing callers' way for a while, and is found again after that."""
    client = broker.client
    delayed = keys.delayed("q")
    client.zadd(delayed, {b"?bad": 1})
    broker.send_later(client, "q", 1, b"good", time.time() - 1)
    script_keys = [delayed] + [keys.queue("q", p) for p in keys.PRIORITIES]
    before_ms = client.time()[0] * 1000
    lease = base.MALFORMED_LEASE_MS
    moved, _, bad = base.COMMON_SCRIPTS(client, "move_due", script_keys, [100, broker.kind, lease])
    assert (moved, bad) == (1, [b"?bad"])
    assert client.zscore(delayed, b"?bad") >= before_ms + lease  # set aside, not gone
    assert broker.move_due(["q"]) == (0, pytest.approx(client.zscore(delayed, b"?bad") / 1000))
    assert dead_letters(client) == []  # a racing caller did not dead-letter it a second time


def test_lists_scripts_dead_letter_elements_without_a_valid_header(lists):
    client = lists.client
    proc = keys.processing("q", "c1")
    lists.send(client, "q", 0, b"good-1")
    lists.send(client, "q", 0, b"good-2")
    assert len(lists.fetch("c1", ["q"], 10, 0)) == 2
    client.lpush(proc, b"\x01")                 # one byte: no priority
    client.lpush(proc, b"\x00\x0cprio-12")      # a priority that is not 0-9
    # return_all.lua, through release (a pool process ended): the good ones back, uncounted
    assert lists.release("c1", ["q"]) == 2
    assert client.llen(proc) == 0
    assert sorted((d.data, d.deliveries) for d in lists.fetch("c2", ["q"], 10, 0)) == [(b"good-1", 0),
                                                                                       (b"good-2", 0)]
    found = malformed(client)
    assert sorted(m for m, _, _ in found) == [b"", b"prio-12"]
    assert all("list element without a valid 2-byte header" in reason for _, reason, _ in found)

    # return_all.lua, through reclaim (a dead worker's consumer): good ones counted, bad ones out
    dead_proc = keys.processing("q", "ghost")
    client.lpush(dead_proc, b"\x00\x00good-3", b"\x07")
    client.zadd(keys.consumers("q"), {"ghost": 1})  # its claim expired long ago
    assert lists.reclaim(["q"]) == 1
    assert client.llen(dead_proc) == 0
    [d] = [d for d in lists.fetch("c3", ["q"], 10, 0)]
    assert (d.data, d.deliveries) == (b"good-3", 1)
    assert len(malformed(client)) == 3
    assert lists.reclaim(["q"]) == 0 and client.zscore(keys.consumers("q"), "ghost") is None  # then the claim

    # requeue.lua (a consumer gives back what it holds): a malformed element is dead-lettered instead
    client.lpush(keys.processing("q", "c4"), b"\x02")
    [held] = lists.held_by("c4", ["q"])
    assert held.problem
    assert lists.requeue(held, redelivered=False) is True
    assert client.llen(keys.processing("q", "c4")) == 0 and len(malformed(client)) == 4
    assert lists.requeue(held, redelivered=False) is False  # no longer held: nothing twice


def test_streams_scripts_dead_letter_entries_without_m_or_with_a_bad_count(streams):
    client = streams.client
    stream = keys.queue("q", 0)

    def add_bad():
        client.xadd(stream, {"x": b"no m"})
        client.xadd(stream, {"m": b"count", "d": b"many"})
        client.xadd(stream, {"m": b"negative", "d": b"-1"})
        client.xadd(stream, {"m": b"good"})

    bad = {b"": "stream entry without its message field (fields: [b'x'])",
           b"count": "delivery count b'many' is not a number",
           b"negative": "delivery count b'-1' is not a number"}

    # reclaim.lua: a dead consumer's entries after the visibility timeout
    add_bad()
    assert len(streams.fetch("ghost", ["q"], 10, 0)) == 4
    deadline = time.monotonic() + 10
    while streams.reclaim(["q"]) == 0:
        assert time.monotonic() < deadline, "never reclaimed"
        time.sleep(0.02)
    [d] = streams.fetch("c1", ["q"], 10, 0)
    assert (d.data, d.deliveries) == (b"good", 1)
    found = malformed(client)
    assert {m: reason for m, reason, _ in found} == {m: f"malformed record: {why}" for m, why in bad.items()}
    assert client.xpending(stream, keys.GROUP)["pending"] == 1  # only the good one, held by c1
    streams.release("c1", ["q"])
    client.delete(DLQ)

    # release.lua: a pool process ended holding them
    add_bad()
    assert len(streams.fetch("c2", ["q"], 10, 0)) == 5  # the four, and the good one c1 gave back
    assert streams.release("c2", ["q"]) == 2
    assert sorted(m for m, _, _ in malformed(client)) == sorted(bad)
    assert client.xpending(stream, keys.GROUP)["pending"] == 0
    assert client.xlen(stream) == 2
    assert sorted(d.data for d in streams.fetch("c3", ["q"], 10, 0)) == [b"good", b"good"]
    streams.release("c3", ["q"])
    client.delete(DLQ)

    # requeue.lua: the consumer's audit gives back what it holds
    add_bad()
    held = streams.fetch("c4", ["q"], 10, 0)
    assert len(held) == 6
    assert [streams.requeue(h, redelivered=True) for h in held].count(True) == 3
    assert sorted(m for m, _, _ in malformed(client)) == sorted(bad)
    assert client.xpending(stream, keys.GROUP)["pending"] == 0
    assert [d.data for d in streams.fetch("c5", ["q"], 10, 0)] == [b"good", b"good", b"good"]


# --- the worker around them -----------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_a_bad_delayed_member_is_dead_lettered_and_the_worker_lives(procs, client_app, redis_client):
    worker = procs.worker("-c", "1")
    before = [client_app.add.apply_async((i, 1), countdown=0.2) for i in range(3)]
    redis_client.zadd(keys.delayed("default"), {b"not a priority digit": 0})
    after = [client_app.add.apply_async((i, 2), countdown=0.2) for i in range(3)]
    assert [r.get(timeout=15) for r in before + after] == [1, 2, 3, 2, 3, 4]
    [(m, reason, _)] = wait_for(lambda: malformed(redis_client), 10, "the dead letter")
    assert m == b"not a priority digit" and "without its priority digit" in reason
    wait_for(lambda: redis_client.zcard(keys.delayed("default")) == 0, 10, "the bad member to go")
    assert worker.popen.poll() is None
    assert client_app.app.control.ping(destination=[worker.hostname], timeout=5.0) == [
        {worker.hostname: {"ok": "pong"}}]
    assert worker.log().count("without its priority digit") == 1


@pytest.mark.timeout(60)
def test_lists_worker_reclaims_a_dead_consumers_one_byte_element(procs, client_app, redis_client):
    conf = settings(broker_transport_options={"queue_type": "lists", "visibility_timeout": 1})
    client_app.app.conf.broker_transport_options = {"queue_type": "lists"}
    good = client_app.app.build_message("testapp.add", (20, 1), None, {})
    ghost = keys.processing("default", "ghost")
    redis_client.lpush(ghost, b"\x00\x00" + good.encode(), b"\x05")  # a good message and a one-byte element
    redis_client.zadd(keys.consumers("default"), {"ghost": 1})        # its worker died long ago
    worker = procs.worker("-c", "1", settings=conf)
    assert client_app.app.AsyncResult(good.id).get(timeout=15) == 21
    [(m, reason, _)] = wait_for(lambda: malformed(redis_client), 10, "the dead letter")
    assert "list element without a valid 2-byte header" in reason and m == b""
    wait_for(lambda: redis_client.llen(ghost) == 0, 10, "the bad element to go")
    assert client_app.add.delay(1, 1).get(timeout=10) == 2
    assert worker.popen.poll() is None


@pytest.mark.timeout(60)
def test_streams_worker_reclaims_malformed_entries_after_the_visibility_timeout(procs, client_app, redis_client):
    app = client_app.app
    stream = keys.queue("default", 0)
    app.broker.ensure_queues(["default"])
    good = app.build_message("testapp.add", (30, 1), None, {})
    bad_count = app.build_message("testapp.add", (40, 1), None, {})
    redis_client.xadd(stream, {"x": b"no m"})
    redis_client.xadd(stream, {"m": bad_count.encode(), "d": b"twice"})
    redis_client.xadd(stream, {"m": good.encode()})
    assert len(app.broker.fetch("ghost", ["default"], 10, 0)) == 3   # a consumer that then died
    worker = procs.worker("-c", "1", settings=settings(broker_transport_options={"visibility_timeout": 1}))
    assert app.AsyncResult(good.id).get(timeout=15) == 31
    found = wait_for(lambda: len(malformed(redis_client)) == 2 and malformed(redis_client), 10, "the dead letters")
    reasons = sorted(reason for _, reason, _ in found)
    assert reasons == ["malformed record: delivery count b'twice' is not a number",
                       "malformed record: stream entry without its message field (fields: [b'x'])"]
    # removed once their dead letters are written (the next round trip)
    wait_for(lambda: redis_client.xpending(stream, keys.GROUP)["pending"] == 0, 10, "the bad entries to go")
    with pytest.raises(DecodeError, match="malformed record: delivery count"):  # nobody waits on it forever
        app.AsyncResult(bad_count.id).get(timeout=10)
    assert worker.popen.poll() is None
    assert client_app.add.delay(2, 2).get(timeout=10) == 4


@pytest.mark.timeout(60)
def test_the_worker_parent_outlives_errors_in_its_upkeep(procs, client_app, redis_client):
    """Keys of the wrong type make move_due (one queue) and the heartbeat fail on every turn: the parent
    logs each kind once and goes on with everything else (the other queue's countdowns move)."""
    worker = procs.worker("-c", "1", "-Q", "default,other")
    redis_client.set(keys.delayed("default"), b"not a sorted set")
    redis_client.delete(keys.WORKERS)
    redis_client.set(keys.WORKERS, b"not a hash")
    for i in range(5):  # one after the other: each needs another turn of the loop that fails
        assert client_app.add.apply_async((i, i), countdown=0.05, queue="other").get(timeout=10) == 2 * i
    assert client_app.app.control.ping(destination=[worker.hostname], timeout=5.0) == [
        {worker.hostname: {"ok": "pong"}}]
    assert worker.popen.poll() is None
    log = worker.log()
    assert log.count("worker upkeep ('move_due', 'default') failed") == 1, log
    assert "WRONGTYPE" in log
    assert client_app.add.delay(3, 4).get(timeout=10) == 7


# --- the control thread -----------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_malformed_control_messages_are_skipped_and_control_keeps_working(procs, client_app, redis_client):
    worker = procs.worker("-c", "1")
    control = client_app.app.control
    running = client_app.hold.delay("ctl")
    wait_for(lambda: redis_client.llen("ctl:started"), 10, "the task to start")
    bad = [serializers.pack(5), serializers.pack([1, 2]), serializers.pack("ping"), b"\xc1 not msgpack",
           serializers.pack({"cmd": "ping", "dest": 5}), serializers.pack({"cmd": "ping", "reply_to": 7}),
           serializers.pack({"cmd": ["ping"]}), serializers.pack({"cmd": "ping", "args": [1]}),
           serializers.pack({"cmd": "revoke", "args": {"task_ids": 5}})]
    for raw in bad * 3:
        redis_client.publish(keys.CONTROL, raw)
    # answered with the error when whom it is for and where to answer are known
    answer = control.broadcast("pool_grow", {"n": "abc"}, [worker.hostname], True, 5.0)
    assert "error" in answer[0][worker.hostname]
    assert control.ping(destination=[worker.hostname], timeout=5.0) == [{worker.hostname: {"ok": "pong"}}]
    answer = control.revoke(running.id, destination=[worker.hostname], terminate=True, reply=True, timeout=5.0)
    assert running.id in answer[0][worker.hostname]["ok"]
    with pytest.raises(TaskRevokedError):
        running.get(timeout=10)
    assert running.state == "REVOKED"
    assert client_app.add.delay(1, 2).get(timeout=10) == 3
    log = worker.log()
    assert log.count("malformed control message skipped: a msgpack int, not a map") == 1, log
    assert "'dest' is int" in log and "'cmd' is list" in log


# --- inspect shows bodies without decoding what it must not -------------------------------------------

class _Opens:
    """Unpickling this creates a file: the proof that something unpickled a body."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.timeout(60)
def test_inspect_shows_an_unsigned_pickle_without_unpickling_it(procs, client_app, redis_client, tmp_path):
    key = "s3cret"
    conf = settings(security_key=key, accept_content=["json", "pickle"])
    app = client_app.app
    app.conf.security_key = key
    trap = tmp_path / "unpickled"
    held = client_app.hold.delay("insp")                                 # signed, json
    pickled = app.build_message("testapp.add", (1, 2), None, {})._replace(
        content_type="pickle", body=pickle.dumps(_Opens(str(trap))), signature=None)
    app.publish(None, pickled)                                           # unsigned pickle
    signed = client_app.add.delay(2, 3)                                  # signed, json
    later = pickled._replace(id="later-pickle", eta=time.time() + 300)
    app.publish(None, later)                                             # unsigned pickle, scheduled
    worker = procs.worker("-c", "1", "--prefetch-multiplier", "4", settings=conf)
    wait_for(lambda: redis_client.llen("insp:started"), 10, "the task to start")
    inspect = app.control.inspect(destination=[worker.hostname], timeout=5.0)
    reserved = {r["id"]: r for r in inspect.reserved()[worker.hostname]}
    assert set(reserved) == {pickled.id, signed.id}
    assert (reserved[signed.id]["args"], reserved[signed.id]["kwargs"]) == ([2, 3], {})
    assert reserved[pickled.id]["args"].startswith("<not decoded: unsigned or forged")
    assert reserved[pickled.id]["kwargs"] is None and reserved[pickled.id]["name"] == "testapp.add"
    [scheduled] = inspect.scheduled()[worker.hostname]
    assert scheduled["request"]["id"] == "later-pickle"
    assert scheduled["request"]["args"].startswith("<not decoded")
    assert not os.path.exists(trap)
    redis_client.rpush("insp:gate", 1)
    assert held.get(timeout=10) == "insp" and signed.get(timeout=10) == 5
    [(_, reason, _)] = wait_for(lambda: dead_letters(redis_client), 10, "the unsigned pickle's dead letter")
    assert "unsigned or forged" in reason
    assert not os.path.exists(trap)


@pytest.mark.timeout(60)
def test_inspect_never_unpickles_even_without_a_key(procs, client_app, redis_client, tmp_path):
    conf = settings(accept_content=["json", "pickle"])
    app = client_app.app
    trap = tmp_path / "unpickled"
    held = client_app.hold.delay("insp2")
    pickled = app.build_message("testapp.add", (1, 2), None, {})._replace(
        content_type="pickle", body=pickle.dumps(_Opens(str(trap))))
    app.publish(None, pickled)
    worker = procs.worker("-c", "1", "--prefetch-multiplier", "4", settings=conf)
    wait_for(lambda: redis_client.llen("insp2:started"), 10, "the task to start")
    [reserved] = app.control.inspect(destination=[worker.hostname], timeout=5.0).reserved()[worker.hostname]
    assert reserved["id"] == pickled.id and reserved["args"] == ("<not decoded: a pickle body is not decoded for "
                                                                 "display (only json and msgpack are)>")
    assert not os.path.exists(trap)
    redis_client.rpush("insp2:gate", 1)
    assert held.get(timeout=10) == "insp2"


# --- beat ---------------------------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_beat_takes_a_malformed_last_run_for_never_and_goes_on(redis_url, redis_client, caplog):
    caplog.set_level(logging.INFO, logger="minique.beat")
    app = Minique("t", broker=redis_url)
    app.conf.beat_schedule = {name: {"task": f"t.{name}", "schedule": 60} for name in ("bad", "huge", "binary", "good")}
    redis_client.hset(keys.BEAT_LAST, mapping={"bad": "garbage", "huge": "1e300", "binary": b"\xff\xfe",
                                               "good": repr(time.time())})
    beat = Beat(app)
    assert 0 < beat.tick() <= 60
    stream = keys.queue("default", 0)
    from minique.message import decode
    assert sorted(decode(f[b"m"]).task for _, f in redis_client.xrange(stream)) == ["t.bad", "t.binary", "t.huge"]
    for name in ("bad", "huge", "binary"):  # healed by the claim
        assert float(redis_client.hget(keys.BEAT_LAST, name)) > time.time() - 5
    beat.tick()
    assert redis_client.xlen(stream) == 3
    warnings = [r.getMessage() for r in caplog.records if "malformed last run" in r.getMessage()]
    assert len(warnings) == 3, warnings


@pytest.mark.timeout(60)
def test_a_pool_process_outlives_errors_in_its_loop(procs, client_app, redis_client):
    """A queue key of the wrong type makes every fetch fail: the pool process logs it once and keeps
    trying (no crash loop of pool processes); once the key is right again, tasks run."""
    worker = procs.worker("-c", "1")
    [child] = worker.children()
    stream = keys.queue("default", 0)
    redis_client.set(stream, b"not a stream")  # (a blocked read on it ends: the stream is gone)
    wait_for(lambda: "a turn of its loop failed" in worker.log(), 15, "the pool process to meet the bad key")
    assert "WRONGTYPE" in worker.log()
    late = client_app.add.apply_async((5, 5), priority=3)  # another stream of the queue: waits for the fetch
    assert worker.children() == [child] and worker.popen.poll() is None
    redis_client.delete(stream)  # fixed: the next fetch finds no group, makes it again and goes on
    assert late.get(timeout=15) == 10
    assert client_app.add.delay(1, 1).get(timeout=10) == 2
    assert worker.children() == [child]
    assert worker.log().count("a turn of its loop failed") == 1


@pytest.mark.timeout(60)
def test_a_revoked_member_that_is_not_an_id_is_skipped(procs, client_app, redis_client):
    """minique:revoked holding bytes that are no task id (not UTF-8): pool processes start and honour the
    real revocations; inspect revoked lists the ids."""
    app = client_app.app
    redis_client.zadd(keys.REVOKED, {b"\xff\xfe not utf-8": time.time() + 3600})
    doomed = client_app.add.apply_async((1, 1), countdown=0.2)
    app.control.revoke(doomed.id)
    worker = procs.worker("-c", "1")
    with pytest.raises(TaskRevokedError):
        doomed.get(timeout=15)
    assert client_app.add.delay(2, 2).get(timeout=10) == 4
    revoked = app.control.inspect(destination=[worker.hostname], timeout=5.0).revoked()
    assert revoked == {worker.hostname: [doomed.id]}
    assert len(worker.children()) == 1 and "crashed" not in worker.log()
