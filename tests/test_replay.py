"""Replay protection for signed messages (`security_message_max_age`, off by default; issue 16):
a freshness window on the send time and a once-only mark per (task id, retries, delivery count),
against real workers. A replayed or stale message is dead-lettered with its reason and writes no
result; retries, redeliveries after a crash and requeues still run."""
import json
import time

import pytest

from minique import keys, message as message_mod, replay, states
from minique.exceptions import ConfigurationError
from minique.signing import sign
from procs import Books, wait_for

KEY = "r3play-key"
WINDOW = 60


def settings(**more):
    return json.dumps({"security_key": KEY, "security_message_max_age": WINDOW, **more})


def signed_app(client_app, **conf):
    app = client_app.app
    app.conf.update(security_key=KEY, **conf)
    app._reset()
    return app


def dead_letters(redis_client):
    return [{k.decode(): (v if k == b"m" else v.decode()) for k, v in fields.items()}
            for _, fields in redis_client.xrange("minique:dlq")]


def reasons(redis_client):
    return [f["reason"] for f in dead_letters(redis_client)]


# --- the rules (pure) ---------------------------------------------------------------------------------

def _msg(**fields):
    return message_mod.Message(id="i", task="t", body=b"[[],{}]", **fields)


def test_freshness_counts_from_the_send_time_or_the_eta():
    now = 10_000.0
    assert replay.staleness(_msg(sent_at=now - 59), now, 60) is None
    assert "sent 61s ago" in replay.staleness(_msg(sent_at=now - 61), now, 60)
    assert replay.staleness(_msg(sent_at=now - 500, eta=now - 30), now, 60) is None   # waited for its ETA
    assert "due 90s ago" in replay.staleness(_msg(sent_at=now - 500, eta=now - 90), now, 60)
    assert "no send time" in replay.staleness(_msg(), now, 60)
    assert replay.staleness(_msg(sent_at=now + 5), now, 60) is None                  # a clock ahead


def test_a_mark_lives_until_the_message_is_stale_everywhere():
    now = 10_000.0
    ttl = replay.mark_ttl_ms(_msg(sent_at=now - 10), now, 60)
    assert ttl == (60 - 10 + replay.CLOCK_SKEW) * 1000
    assert replay.mark_ttl_ms(_msg(sent_at=now - 10, eta=now + 100), now, 60) == (100 + 60 + replay.CLOCK_SKEW) * 1000
    assert replay.mark_ttl_ms(_msg(sent_at=now - 1000), now, 60) == 1000


@pytest.mark.parametrize("value", [-1, "60", float("inf"), True, [60]])
def test_the_window_must_be_a_positive_number(value):
    with pytest.raises(ConfigurationError, match="security_message_max_age"):
        replay.max_age_of(value)
    assert replay.max_age_of(None) is None and replay.max_age_of(0) is None and replay.max_age_of(2) == 2.0


# --- through real workers ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["streams", "lists"])
def test_a_replayed_signed_message_is_dead_lettered_and_its_result_stands(procs, client_app, redis_client, kind):
    transport = {"queue_type": kind}
    procs.worker("-c", "1", settings=settings(broker_transport_options=transport))
    app = signed_app(client_app, security_message_max_age=WINDOW, broker_transport_options=transport)
    msg = app.build_message("testapp.book", ("replay", "once"), None, {})
    app.publish(None, msg)
    assert app.AsyncResult(msg.id).get(timeout=10) == "once"
    app.publish(None, msg)                                   # the same signed bytes, again
    (dead,) = wait_for(lambda: dead_letters(redis_client), 10, "the dead letter")
    assert dead["reason"].startswith(f"replayed message: task {msg.id} (retries 0, delivery 0) already started")
    assert dead["task_id"] == msg.id and dead["m"] == msg.encode()
    assert Books(redis_client, "replay", ["once"]).done() == {"once": 1}
    assert app.AsyncResult(msg.id).state == states.SUCCESS and app.AsyncResult(msg.id).get(timeout=1) == "once"
    assert redis_client.exists(keys.replay_mark(msg.id, 0, 0))


def test_a_burst_of_copies_runs_once(procs, client_app, redis_client):
    app = signed_app(client_app)
    msg = app.build_message("testapp.book", ("burst", "b", 0.2), None, {})
    pipe = redis_client.pipeline()
    for _ in range(6):
        app.publish(pipe, msg)
    pipe.execute()
    procs.worker("-c", "3", "--prefetch-multiplier", "1", settings=settings())
    assert app.AsyncResult(msg.id).get(timeout=10) == "b"
    wait_for(lambda: len(dead_letters(redis_client)) == 5, 10, "five dead letters")
    assert all(r.startswith("replayed message") for r in reasons(redis_client))
    assert Books(redis_client, "burst", ["b"]).done() == {"b": 1}


def test_a_stale_message_is_dead_lettered_without_a_result(procs, client_app, redis_client):
    procs.worker("-c", "1", settings=settings())
    app = signed_app(client_app)
    old = app.build_message("testapp.book", ("stale", "old"), None, {})
    old = sign(old._replace(sent_at=time.time() - 2 * WINDOW, signature=None), KEY)
    app.publish(None, old)
    (dead,) = wait_for(lambda: dead_letters(redis_client), 10, "the dead letter")
    reason = dead["reason"]
    assert reason.startswith("stale message: sent 12") and "security_message_max_age (60s)" in reason
    assert app.AsyncResult(old.id).state == states.PENDING           # nothing written for it
    assert Books(redis_client, "stale", ["old"]).done() == {}
    # the window counts from the ETA of a message that waited for it
    waited = app.build_message("testapp.book", ("stale", "eta"), None, {"countdown": 0.3})
    waited = sign(waited._replace(sent_at=time.time() - 2 * WINDOW, signature=None), KEY)
    app.publish(None, waited)
    assert app.AsyncResult(waited.id).get(timeout=10) == "eta"


def test_unsigned_replays_cannot_spend_a_mark(procs, client_app, redis_client):
    """The mark is taken only after the signature verifies: a forged copy cannot block the real one."""
    procs.worker("-c", "1", settings=settings())
    app = signed_app(client_app)
    real = app.build_message("testapp.book", ("forge", "real"), None, {})
    forged = real._replace(signature=b"\x00" * 32)
    app.publish(None, forged)
    wait_for(lambda: dead_letters(redis_client), 10, "the forged message's dead letter")
    app.publish(None, real)
    assert app.AsyncResult(real.id).get(timeout=10) == "real"
    assert reasons(redis_client) == ["unsigned or forged message (security_key is set)"]


def test_retries_signed_again_by_the_worker_still_run(procs, client_app, redis_client):
    procs.worker("-c", "1", settings=settings())
    app = signed_app(client_app)
    r = app.send_task("testapp.retry_then_report", ("retries", 2), None, countdown=0)
    report = r.get(timeout=20)
    assert report["retries"] == 2 and report["runs"] == 3
    assert dead_letters(redis_client) == []
    for retries in range(3):
        assert redis_client.exists(keys.replay_mark(r.id, retries, 0))


def test_a_redelivery_after_a_lost_process_still_runs(procs, client_app, redis_client):
    procs.worker("-c", "1", settings=settings(task_acks_late=True, task_reject_on_worker_lost=True))
    app = signed_app(client_app)
    r = app.send_task("testapp.die_once", ("die-once",))
    assert r.get(timeout=20) == "survived"                    # killed on its first run, redelivered once
    assert int(redis_client.get("die-once")) == 2
    assert dead_letters(redis_client) == []
    assert redis_client.exists(keys.replay_mark(r.id, 0, 0)) and redis_client.exists(keys.replay_mark(r.id, 0, 1))


@pytest.mark.fault  # kills a worker
def test_a_redelivery_after_a_dead_worker_still_runs(procs, client_app, redis_client):
    conf = dict(task_acks_late=True, broker_transport_options={"visibility_timeout": 2})
    first = procs.worker("-c", "1", settings=settings(**conf))
    app = signed_app(client_app)
    r = app.send_task("testapp.gated", ("dead-worker", "g"))
    wait_for(lambda: redis_client.llen("dead-worker:started"), 10, "the task to start")
    first.kill_group()
    procs.worker("-c", "1", settings=settings(**conf))
    wait_for(lambda: redis_client.llen("dead-worker:started") == 2, 15, "the redelivery")
    redis_client.rpush("dead-worker:gate", "go")
    assert r.get(timeout=10) == "g"
    assert [d for _, _, d in Books(redis_client, "dead-worker", []).starts()] == [0, 1]
    assert dead_letters(redis_client) == []


def test_reject_requeue_with_early_ack_gives_its_mark_back(procs, client_app, redis_client):
    procs.worker("-c", "1", settings=settings())
    app = signed_app(client_app)
    r = app.send_task("testapp.reject_requeue_once", ("reject-once",))
    assert r.get(timeout=10) == 2                             # the resent copy (the same bytes) ran
    assert dead_letters(redis_client) == []


def test_off_by_default_a_copy_runs_again(procs, client_app, redis_client):
    procs.worker("-c", "1", settings=json.dumps({"security_key": KEY}))
    app = signed_app(client_app)
    msg = app.build_message("testapp.book", ("default", "twice"), None, {})
    app.publish(None, msg)
    assert app.AsyncResult(msg.id).get(timeout=10) == "twice"
    app.publish(None, msg)
    wait_for(lambda: Books(redis_client, "default", ["twice"]).done() == {"twice": 2}, 10, "the second run")
    assert dead_letters(redis_client) == []


def test_a_bad_window_stops_the_worker_with_one_line(procs):
    worker = procs.worker("-c", "1", settings=json.dumps({"security_message_max_age": "soon"}), wait=False)
    assert worker.wait(timeout=30) != 0
    assert "security_message_max_age must be a positive number" in worker.log()
    assert "Traceback" not in worker.log()
