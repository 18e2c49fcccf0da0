"""Delivery semantics against real workers and a real Redis.

ETA / countdown, expires, revoke (also on workers started later, and terminate=True), acks-late
and the visibility timeout (redelivery, delivery count, dead-lettering past max deliveries),
time limits with acks_late, retries end to end, dead letters through the CLI, message signing,
and Redis URLs with credentials or TLS.
"""
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from minique import keys, states
from minique.exceptions import MaxRetriesExceededError, TaskRevokedError, TimeLimitExceeded, WorkerLostError
from procs import Books, Processes, drop_testapp, pid_alive, wait_for

pytestmark = pytest.mark.timeout(60)

VIS2 = {"broker_transport_options": {"visibility_timeout": 2}}


def settings(**kw):
    return json.dumps(kw)


def started_tokens(redis_client, key):
    return [line.decode().split("|")[0] for line in redis_client.lrange(f"{key}:started", 0, -1)]


def started_pid(redis_client, key, token):
    for line in redis_client.lrange(f"{key}:started", 0, -1):
        t, pid, _, _ = line.decode().split("|")
        if t == token:
            return int(pid)
    return None


# --- countdown and ETA ---------------------------------------------------------------------------

def test_countdown_waits_in_the_delayed_set_and_runs_once_not_early(procs, client_app, redis_client):
    procs.worker("-c", "2")
    r = client_app.on_time.apply_async(("ontime", "a"), countdown=1.0)
    assert redis_client.zcard("minique:{default}:delayed") == 1
    assert r.state == states.PENDING
    assert r.get(timeout=10) == "a"
    (line,) = redis_client.lrange("ontime", 0, -1)
    token, ran_at, eta, _ = json.loads(line)
    assert ran_at >= eta
    assert redis_client.zcard("minique:{default}:delayed") == 0


def test_eta_datetime_is_honoured(procs, client_app, redis_client):
    procs.worker("-c", "1")
    eta = datetime.now(timezone.utc) + timedelta(seconds=1)
    r = client_app.on_time.apply_async(("eta", "a"), eta=eta)
    r.get(timeout=10)
    (line,) = redis_client.lrange("eta", 0, -1)
    _, ran_at, msg_eta, _ = json.loads(line)
    assert abs(msg_eta - eta.timestamp()) < 1e-3
    assert ran_at >= eta.timestamp()


def test_naive_datetimes_are_utc_not_the_hosts_local_time(client_app):
    """Celery takes a naive eta/expires in the app's timezone (UTC by default): the common
    `eta=datetime.utcnow() + timedelta(...)` must not be hours off on a host whose clock is local."""
    import os
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    try:
        app = client_app.app
        naive_utc = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(seconds=60)
        msg = app.build_message("testapp.noop", (), None, {"eta": naive_utc, "expires": naive_utc})
        assert abs(msg.eta - (time.time() + 60)) < 2 and abs(msg.expires - (time.time() + 60)) < 2
        app.conf.timezone = "America/New_York"
        from zoneinfo import ZoneInfo
        naive_ny = datetime.now(ZoneInfo("America/New_York")).replace(tzinfo=None) + timedelta(seconds=60)
        assert abs(app.build_message("testapp.noop", (), None, {"eta": naive_ny}).eta - (time.time() + 60)) < 2
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


def test_long_delay_is_never_redelivered_or_duplicated(procs, client_app, redis_client):
    """A countdown several times the visibility timeout: with Celery's Redis transport such a task is
    held unacked and redelivered; here it waits in the delayed set, held by nobody."""
    for _ in range(2):
        procs.worker("-c", "2", settings=json.dumps({"broker_transport_options": {"visibility_timeout": 1},
                                                     "task_acks_late": True}))
    results = [client_app.on_time.apply_async(("long", f"t{i}"), countdown=3.5) for i in range(5)]
    for r in results:
        r.get(timeout=15)
    lines = [json.loads(x) for x in redis_client.lrange("long", 0, -1)]
    assert sorted(x[0] for x in lines) == [f"t{i}" for i in range(5)]
    assert all(ran_at >= eta for _, ran_at, eta, _ in lines)
    assert redis_client.xlen("minique:dlq") == 0


def test_move_due_moves_each_message_once_under_racing_callers(client_app, redis_client):
    """Several callers racing over the same due messages (as several workers do): each moves once."""
    import threading
    app = client_app.app
    pipe = redis_client.pipeline()
    for _ in range(500):
        msg = app.build_message("testapp.noop", (), None, {"countdown": 0.2})
        app.publish(pipe, msg)
    pipe.execute()
    assert redis_client.zcard("minique:{default}:delayed") == 500
    moved = []
    due = msg.eta + 0.01
    wait_for(lambda: time.time() > due, 5, "the last ETA")

    def mover():
        total = 0
        for _ in range(20):
            total += app.broker.move_due(["default"], limit=37)[0]
        moved.append(total)

    threads = [threading.Thread(target=mover) for _ in range(4)]
    [t.start() for t in threads]
    [t.join(10) for t in threads]
    assert sum(moved) == 500
    assert redis_client.xlen("minique:{default}:p0") == 500
    assert redis_client.zcard("minique:{default}:delayed") == 0


# --- expires -------------------------------------------------------------------------------------

def test_expired_before_its_eta_is_revoked_not_run(procs, client_app, redis_client):
    procs.worker("-c", "1")
    r = client_app.book.apply_async(("exp", "a"), countdown=1.0, expires=0.3)
    with pytest.raises(TaskRevokedError, match="expired"):
        r.get(timeout=10)
    assert r.state == states.REVOKED
    assert client_app.app.backend.get_meta(r.id)["reason"] == "expired"
    assert redis_client.llen("exp:started") == 0


def test_expires_as_datetime_in_the_past_and_in_the_future(procs, client_app, redis_client):
    procs.worker("-c", "1")
    past = client_app.book.apply_async(("expd", "past"), expires=datetime.now(timezone.utc) - timedelta(seconds=1))
    future = client_app.book.apply_async(("expd", "future"), expires=datetime.now(timezone.utc) + timedelta(hours=1))
    assert future.get(timeout=10) == "future"
    with pytest.raises(TaskRevokedError):
        past.get(timeout=10)
    assert client_app.app.backend.get_meta(past.id)["reason"] == "expired"
    assert started_tokens(redis_client, "expd") == ["future"]


def test_expires_while_waiting_behind_a_busy_worker(procs, client_app, redis_client):
    procs.worker("-c", "1", "--prefetch-multiplier", "1")
    client_app.gated.delay("busy", "g")
    wait_for(lambda: redis_client.llen("busy:started"), 10, "the gated task to start")
    r = client_app.book.apply_async(("busy", "late"), expires=0.3)
    time.sleep(0.5)  # the fault: the task outlives its expiry while queued (not a synchronisation)
    redis_client.rpush("busy:gate", "go")
    with pytest.raises(TaskRevokedError, match="expired"):
        r.get(timeout=10)
    assert started_tokens(redis_client, "busy") == ["g"]


# --- revoke --------------------------------------------------------------------------------------

def test_revoked_prefetched_tasks_never_run(procs, client_app, redis_client):
    """Tasks already reserved by a busy pool process are revoked: they must not run when it gets to them."""
    client_app.gated.delay("rv", "g")
    victims = [client_app.book.delay("rv", f"v{i}") for i in range(2)]
    keeper = client_app.book.delay("rv", "keep")
    worker = procs.worker("-c", "1", "--prefetch-multiplier", "4")
    wait_for(lambda: redis_client.llen("rv:started"), 10, "the gated task to start")
    def held() -> int:
        return client_app.app.broker.held(["default"]).get("default", 0)
    assert held() == 3                         # the busy process reserved the three behind it
    replies = client_app.app.control.revoke([v.id for v in victims], destination=[worker.hostname], reply=True,
                                            timeout=5)
    assert [list(r) for r in replies] == [[worker.hostname]]     # the worker has the news
    redis_client.rpush("rv:gate", "go")
    assert keeper.get(timeout=10) == "keep"
    for v in victims:
        with pytest.raises(TaskRevokedError):
            v.get(timeout=10)
        assert v.state == states.REVOKED
    assert started_tokens(redis_client, "rv") == ["g", "keep"]


def test_revoked_before_any_worker_runs_is_never_run_by_workers_started_later(procs, client_app, redis_client):
    r = client_app.book.delay("rl", "x")
    client_app.app.control.revoke(r.id)
    other = client_app.book.delay("rl", "y")
    procs.worker("-c", "2")
    assert other.get(timeout=10) == "y"
    with pytest.raises(TaskRevokedError):
        r.get(timeout=10)
    assert started_tokens(redis_client, "rl") == ["y"]


def delayed_scores(redis_client, queue):
    return dict(redis_client.zrange(keys.delayed(queue), 0, -1, withscores=True))


def test_a_revoked_task_with_an_eta_beyond_the_revoke_horizon_never_runs(procs, client_app, redis_client):
    """The revoke is kept worker_revoke_expires past the task's ETA (1 s here: the horizon, which was a
    fixed 3 h after the revoke), and the waiting task is brought forward: a worker (here one started
    after the revoke) settles it as REVOKED now, not at its ETA, and nothing of it is left to run."""
    client_app.app.conf.worker_revoke_expires = 1
    eta = datetime.now(timezone.utc) + timedelta(seconds=60)
    r = client_app.book.apply_async(("rh", "victim"), eta=eta)
    client_app.app.control.revoke(r.id)
    assert redis_client.zscore(keys.REVOKED, r.id) == pytest.approx(eta.timestamp() + 1, abs=0.01)
    procs.worker("-c", "1")
    with pytest.raises(TaskRevokedError, match="revoked"):
        r.get(timeout=10)  # well before its ETA
    assert r.state == states.REVOKED and client_app.app.backend.get_meta(r.id)["reason"] == "revoked"
    assert delayed_scores(redis_client, "default") == {}
    assert client_app.app.broker.length("default", 0) == 0 and client_app.app.broker.held(["default"]) == {
        "default": 0}
    assert redis_client.llen("rh:started") == 0


def test_revoking_delayed_tasks_takes_them_out_of_the_delayed_sets_they_wait_in(procs, client_app, redis_client):
    """Found in the delayed set of any queue a live worker consumes; a message that only holds the revoked
    id (a link's) is left as it was; the revoke is kept past the ETA when found, else from the revoke on."""
    procs.worker("-c", "1", "-Q", "default,other")
    linked = client_app.book.si("rd", "linked")
    linked_result = linked.freeze()
    holder = client_app.book.apply_async(("rd", "holder"), countdown=60, link=linked)  # holds the linked id
    a = client_app.book.apply_async(("rd", "a"), countdown=60)
    b = client_app.book.apply_async(("rd", "b"), countdown=60, queue="other")
    before = delayed_scores(redis_client, "default")
    due_a = next(score for member, score in before.items() if a.id.encode() in member) / 1000
    client_app.app.control.revoke([a.id, b.id, linked_result.id])
    keep = client_app.app.conf.worker_revoke_expires
    assert redis_client.zscore(keys.REVOKED, a.id) == pytest.approx(due_a + keep, abs=0.01)
    assert redis_client.zscore(keys.REVOKED, linked_result.id) == pytest.approx(time.time() + keep, abs=5)
    for r in (a, b):
        with pytest.raises(TaskRevokedError):
            r.get(timeout=10)
        assert r.state == states.REVOKED
    assert delayed_scores(redis_client, "other") == {}
    [(member, score)] = delayed_scores(redis_client, "default").items()
    assert holder.id.encode() in member and score == before[member]  # untouched: still due in a minute
    assert redis_client.llen("rd:started") == 0


def test_a_broken_delayed_set_or_heartbeat_does_not_stop_a_revoke(client_app, redis_client, caplog):
    redis_client.set(keys.delayed("default"), b"not a sorted set")   # any Redis client can write these
    redis_client.hset(keys.WORKERS, "junk@host", b"\xc1 not msgpack")
    client_app.app.control.revoke("some-id")
    keep = client_app.app.conf.worker_revoke_expires
    assert redis_client.zscore(keys.REVOKED, "some-id") == pytest.approx(time.time() + keep, abs=5)
    assert "could not search the delayed set of queue 'default'" in caplog.text


def test_revoke_terminate_kills_the_running_task_only(procs, client_app, redis_client):
    worker = procs.worker("-c", "2")
    r = client_app.gated.delay("term", "g", 20)
    pid = wait_for(lambda: started_pid(redis_client, "term", "g"), 10, "the gated task to start")
    client_app.app.control.revoke(r.id, terminate=True, destination=[worker.hostname], reply=True, timeout=5)
    with pytest.raises(TaskRevokedError):
        r.get(timeout=10)
    assert r.state == states.REVOKED
    wait_for(lambda: not pid_alive(pid), 10, "the terminated process to be gone")
    assert client_app.book.delay("term", "after").get(timeout=10) == "after"
    assert Books(redis_client, "term", []).done() == {"after": 1}  # the gated body never finished
    wait_for(lambda: len(worker.children()) == 2, 10, "the pool to be whole again")


def test_revoke_terminate_of_a_finished_task_kills_nobody(procs, client_app, redis_client):
    worker = procs.worker("-c", "1")
    r = client_app.book.delay("tdone", "a")
    r.get(timeout=10)
    children = worker.children()
    client_app.app.control.revoke(r.id, terminate=True, destination=[worker.hostname], reply=True, timeout=5)
    assert client_app.book.delay("tdone", "b").get(timeout=10) == "b"
    assert worker.children() == children
    assert r.state == states.SUCCESS


# --- acks-late and the visibility timeout ----------------------------------------------------------

@pytest.mark.parametrize("acks_late", [False, True])
def test_ack_timing_early_or_late(procs, client_app, redis_client, acks_late):
    """Early ack: the message is gone from the queue when the body starts. Late: it stays until it ends."""
    procs.worker("-c", "1", settings=settings(task_acks_late=acks_late))
    r = client_app.gated.delay("ack", "g")
    wait_for(lambda: redis_client.llen("ack:started"), 10, "the task to start")
    def pending() -> int:
        return client_app.app.broker.held(["default"]).get("default", 0)
    assert pending() == (1 if acks_late else 0)
    redis_client.rpush("ack:gate", "go")
    r.get(timeout=10)
    wait_for(lambda: pending() == 0, 5, "the ack")


@pytest.mark.fault  # kills a worker
def test_killed_worker_acks_late_task_is_redelivered_after_visibility_timeout(procs, client_app, redis_client):
    first = procs.worker("-c", "1", settings=settings(task_acks_late=True, **VIS2))
    r = client_app.gated.delay("vis", "g")
    wait_for(lambda: redis_client.llen("vis:started"), 10, "the task to start")
    killed_at = time.time()
    first.kill_group()
    procs.worker("-c", "1", settings=settings(task_acks_late=True, **VIS2))
    wait_for(lambda: redis_client.llen("vis:started") == 2, 15, "the redelivery")
    assert time.time() - killed_at >= 2.0 - 0.1          # not before the visibility timeout
    redis_client.rpush("vis:gate", "go")
    assert r.get(timeout=10) == "g"
    deliveries = [d for _, _, d in Books(redis_client, "vis", []).starts()]
    assert deliveries == [0, 1]
    assert Books(redis_client, "vis", []).done() == {"g": 1}


@pytest.mark.parametrize("limit_setting", ["transport_option", "task_max_deliveries"])
def test_past_max_deliveries_the_message_is_dead_lettered(procs, client_app, redis_client, limit_setting):
    conf = {"task_acks_late": True, "task_reject_on_worker_lost": True}
    if limit_setting == "transport_option":
        conf["broker_transport_options"] = {"max_deliveries": 2}
    else:
        conf["task_max_deliveries"] = 2
    procs.worker("-c", "1", settings=json.dumps(conf))
    r = client_app.die_always.delay("poison")
    dead = wait_for(lambda: redis_client.xrange("minique:dlq"), 20, "the dead letter")
    assert dead[0][1][b"reason"] == b"too many deliveries"
    assert dead[0][1][b"task_id"].decode() == r.id
    assert [int(x) for x in redis_client.lrange("poison", 0, -1)] == [0, 1, 2]
    with pytest.raises(WorkerLostError, match="too many deliveries"):
        r.get(timeout=5)
    assert client_app.add.delay(1, 2).get(timeout=10) == 3


def test_reject_on_worker_lost_off_fails_the_acks_late_task(procs, client_app, redis_client):
    procs.worker("-c", "1", settings=settings(task_acks_late=True))
    r = client_app.die_always.delay("lost")
    with pytest.raises(WorkerLostError):
        r.get(timeout=10)
    assert redis_client.llen("lost") == 1
    assert client_app.app.broker.held(["default"]).get("default", 0) == 0


def test_hard_time_limit_with_acks_late_fails_and_is_not_redelivered(procs, client_app, redis_client):
    procs.worker("-c", "1", settings=settings(task_acks_late=True, task_reject_on_worker_lost=True, **VIS2))
    r = client_app.hard_limited_record.delay("hard")
    with pytest.raises(TimeLimitExceeded):
        r.get(timeout=10)
    assert client_app.add.delay(1, 1).get(timeout=10) == 2
    assert redis_client.llen("hard") == 1
    assert client_app.app.broker.held(["default"]).get("default", 0) == 0


@pytest.mark.parametrize("kind", ["streams", "lists"])
def test_extend_renews_every_message_a_consumer_holds(redis_client, kind):
    """A live consumer's whole reservation (running + prefetched) is renewed, not just its first message."""
    from minique.brokers import make_broker
    broker = make_broker(redis_client, {"queue_type": kind, "visibility_timeout": 0.5}, 10)
    broker.ensure_queues(["q"])
    for i in range(5):
        broker.send(redis_client, "q", 0, f"m{i}".encode())
    assert len(broker.fetch("c1", ["q"], 5, 0)) == 5
    for _ in range(4):                       # 4 x 0.25 s: twice the visibility timeout, renewed all along
        later = time.time() + 0.25
        wait_for(lambda later=later: time.time() > later, 2, "a quarter second")
        broker.extend("c1", ["q"])
        assert broker.reclaim(["q"]) == 0
    assert len(broker.held_by("c1", ["q"])) == 5


def test_reaper_finds_idle_messages_behind_many_live_ones(redis_client):
    """XAUTOCLAIM scans a bounded slice of the pending list per call: the reaper must follow its cursor."""
    from minique.brokers import make_broker
    broker = make_broker(redis_client, {"visibility_timeout": 10}, 10)
    broker.ensure_queues(["q"])
    pipe = redis_client.pipeline(transaction=False)
    for i in range(2500):
        broker.send(pipe, "q", 0, f"m{i}".encode())
    pipe.execute()
    held = broker.fetch("live", ["q"], 2500, 0)
    assert len(held) == 2500
    dead = [d.receipt[1] for d in held[-5:]]                      # a dead consumer's, idle for a minute
    redis_client.xclaim(keys.queue("q", 0), keys.GROUP, "dead", 0, dead, idle=60_000, justid=True)
    assert broker.reclaim(["q"]) == 5
    assert broker.reclaim(["q"]) == 0


def test_a_reaper_whose_lock_expired_does_not_delete_the_next_holders_lock(redis_url, redis_client):
    from minique import Minique
    from minique.worker.main import Worker
    app = Minique("t", broker=redis_url)
    app.broker.ensure_queues(["q"])
    worker = Worker(app, queues=["q"], hostname="w1@h")
    lock, held = keys.lock("reaper"), []

    def reclaim_while_the_lock_changes_hands(queues):
        held.append(redis_client.get(lock))                      # ours while we reclaim
        redis_client.delete(lock)                                # it expires (PX 5000 passed) ...
        assert redis_client.set(lock, "w2@h its-token", nx=True, px=5000)  # ... and another reaper takes it
        return 0

    app.broker.reclaim = reclaim_while_the_lock_changes_hands
    worker._reclaim()
    assert held[0].startswith(b"w1@h ")
    assert redis_client.get(lock) == b"w2@h its-token"
    assert redis_client.pttl(lock) > 0

    del app.broker.reclaim                                       # the real one, with the lock free again
    redis_client.delete(lock)
    worker._reclaim()
    assert redis_client.get(lock) is None                        # a reaper that still holds its lock frees it
    app.close()


# --- retries end to end ----------------------------------------------------------------------------

def test_retry_keeps_id_root_parent_and_shows_retry_state(procs, client_app, redis_client):
    procs.worker("-c", "1")
    r = client_app.retry_then_report.apply_async(("rt", 2, 0.6), root_id="the-root", parent_id="the-parent")
    wait_for(lambda: r.state == states.RETRY, 10, "the RETRY state")
    assert isinstance(r.result, KeyError)
    out = r.get(timeout=10)
    assert out == {"id": r.id, "retries": 2, "root_id": "the-root", "parent_id": "the-parent", "runs": 3}


def test_past_max_retries_fails_with_the_original_exception(procs, client_app, redis_client):
    procs.worker("-c", "1")
    r = client_app.retry_forever.delay("rf")
    with pytest.raises(KeyError, match="still failing"):
        r.get(timeout=10)
    assert r.state == states.FAILURE
    assert int(redis_client.get("rf")) == 3           # the first run and max_retries=2 retries
    r2 = client_app.retry_no_exc.delay("rn")
    with pytest.raises(MaxRetriesExceededError):
        r2.get(timeout=10)
    assert int(redis_client.get("rn")) == 2


def test_autoretry_backs_off_exponentially(procs, client_app, redis_client):
    procs.worker("-c", "1")
    r = client_app.flaky_timed.delay("bo", 3)
    assert r.get(timeout=15) == 4
    times = [float(x) for x in redis_client.lrange("bo", 0, -1)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    for gap, want in zip(gaps, (0.2, 0.4, 0.8)):           # retry_backoff=0.2, no jitter
        assert want - 0.01 <= gap <= want + 0.6, gaps


# --- dead letters through the CLI ------------------------------------------------------------------

def _cli(procs, *args):
    out = subprocess.run([sys.executable, "-m", "minique.cli", "-A", "testapp", *args], env=procs.env(),
                         cwd=procs.tmp_path, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_dlq_cli_list_replay_purge(procs, client_app, redis_client):
    app = client_app.app
    good = app.build_message("testapp.book", ("dlq", "replayed"), None, {})
    pipe = redis_client.pipeline()
    app.broker.dead_letter(pipe, good.encode(), "parked by hand", "default", good.id)
    app.broker.dead_letter(pipe, b"\x00junk", "junk", "default")
    pipe.execute()
    listing = _cli(procs, "dlq", "list")
    assert f"task={good.id}" in listing and "reason=parked by hand" in listing and "reason=junk" in listing
    entry = listing.splitlines()[0].split()[0]
    assert "Replayed 1" in _cli(procs, "dlq", "replay", entry)
    procs.worker("-c", "1")
    assert app.AsyncResult(good.id).get(timeout=10) == "replayed"
    assert "Deleted 1" in _cli(procs, "dlq", "purge", "-f")
    assert redis_client.xlen("minique:dlq") == 0


# --- message signing -------------------------------------------------------------------------------

def test_security_key_dead_letters_unsigned_and_forged_messages(procs, client_app, redis_client):
    procs.worker("-c", "1", settings=settings(security_key="s3cret"))
    app = client_app.app
    unsigned = client_app.book.delay("sig", "unsigned")                   # the client has no key
    app.conf.security_key = "wrong-key"
    forged = client_app.book.delay("sig", "forged")
    app.conf.security_key = "s3cret"
    tampered_msg = app.build_message("testapp.book", ("sig", "original"), None, {})
    from minique import serializers
    tampered_msg = tampered_msg._replace(body=serializers.dumps([["sig", "tampered"], {}], "json"))
    app.publish(redis_client, tampered_msg)
    good = client_app.book.delay("sig", "good")
    retried = client_app.retry_then_report.delay("sig-retry", 1)          # re-signed by the worker
    assert good.get(timeout=10) == "good"
    assert retried.get(timeout=10)["runs"] == 2
    dead = wait_for(lambda: len(redis_client.xrange("minique:dlq")) == 3 and redis_client.xrange("minique:dlq"),
                    10, "three dead letters")
    assert {f[b"task_id"].decode() for _, f in dead} == {unsigned.id, forged.id, tampered_msg.id}
    assert all(b"unsigned or forged" in f[b"reason"] for _, f in dead)
    assert Books(redis_client, "sig", []).done() == {"good": 1}


# --- URLs with credentials, and TLS ------------------------------------------------------------------

def _own_client_app(monkeypatch, url):
    from procs import import_testapp
    return import_testapp(monkeypatch, url)


@pytest.mark.integration  # starts its own redis-server
@pytest.mark.parametrize("who", ["requirepass", "acl_user"])
def test_urls_with_credentials(tmp_path, monkeypatch, who):
    from redis_server import RedisServer
    server = RedisServer(tmp_path / "auth").start()
    admin = server.client()
    if who == "requirepass":
        admin.config_set("requirepass", "pa:ss@word")
        url = f"redis://:pa%3Ass%40word@127.0.0.1:{server.port}/0"
    else:
        admin.execute_command("ACL", "SETUSER", "alice", "on", ">s3cret", "~*", "&*", "+@all")
        admin.execute_command("ACL", "SETUSER", "default", "off")
        url = f"redis://alice:s3cret@127.0.0.1:{server.port}/0"
    admin.close()
    procs = Processes(tmp_path, url)
    testapp = None
    try:
        testapp = _own_client_app(monkeypatch, url)
        procs.worker("-c", "1")
        assert testapp.add.delay(20, 22).get(timeout=10) == 42
        assert testapp.on_time.apply_async(("auth", "x"), countdown=0.2).get(timeout=10) == "x"
        import redis  # and the server does insist on credentials
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, password="nope", retry=Retry(NoBackoff(), 0),
                        username=None if who == "requirepass" else "alice").ping()
    finally:
        procs.close()
        drop_testapp(testapp)
        server.kill()


def _make_cert(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    out = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                          "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                          "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True, timeout=30)
    if out.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {out.stderr[-200:]!r}")
    return cert, key


@pytest.mark.integration  # starts its own redis-server
def test_rediss_url_with_tls(tmp_path, monkeypatch):
    import shutil
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    from redis_server import RedisServer, _free_port
    cert, key = _make_cert(tmp_path)
    tls_port = _free_port()
    server = RedisServer(tmp_path / "tls", extra_args=(
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"))
    try:
        server.start()
    except RuntimeError as exc:
        pytest.skip(f"this redis-server has no TLS: {exc}")
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"
    procs = Processes(tmp_path, url)
    testapp = None
    try:
        testapp = _own_client_app(monkeypatch, url)
        procs.worker("-c", "1")
        assert testapp.add.delay(1, 2).get(timeout=10) == 3
        plain = server.client()
        clients = plain.client_list()
        plain.close()
        assert any(c.get("laddr", "").endswith(f":{tls_port}") for c in clients)   # traffic went over TLS
    finally:
        procs.close()
        drop_testapp(testapp)
        server.kill()
