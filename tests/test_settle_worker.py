"""settle() through real workers: the wrong fates the settle redesign fixed, each a regression test.

- acks_late with task_acks_on_failure_or_timeout off: a failure leaves the queue for the dead
  letters (Celery: reject without requeue), it is not requeued and run again;
- in that branch an Ignore is acked (Celery acknowledges it);
- a result that will not encode (a circular list: ValueError) fails that task alone, not its
  process and not the other tasks of its batch;
- malformed broker records and wrongly typed envelope fields are dead-lettered with their reason,
  and the worker goes on.
"""
import json

import pytest

from minique import keys, serializers, states
from minique.exceptions import EncodeError
from minique.message import make
from procs import wait_for

pytestmark = pytest.mark.timeout(60)
NO_ACK_ON_FAILURE = {"task_acks_late": True, "task_acks_on_failure_or_timeout": False}


def dead_letters(redis_client):
    return [{k.decode(): v for k, v in fields.items()} for _, fields in redis_client.xrange(keys.DLQ)]


def queue_empty(app, queue="default"):
    broker = app.broker
    return broker.held([queue]).get(queue, 0) == 0 and sum(broker.length(queue, p) for p in keys.PRIORITIES) == 0


def test_acks_late_failure_without_ack_on_failure_is_dead_lettered_not_run_again(procs, client_app, redis_client):
    procs.worker("-c", "1", settings=json.dumps(NO_ACK_ON_FAILURE))
    r = client_app.fail_counted.delay("runs")
    with pytest.raises(ValueError, match="failed on purpose"):
        r.get(timeout=10)
    dead = wait_for(lambda: dead_letters(redis_client), 10, "the dead letter")
    assert dead[0]["task_id"] == r.id.encode() and dead[0]["reason"].startswith(b"failed: ValueError(")
    assert client_app.add.delay(1, 2).get(timeout=10) == 3  # (the failure was settled before it)
    assert redis_client.llen("runs") == 1                  # before the fix: run again until max deliveries
    assert queue_empty(client_app.app)
    assert r.state == states.FAILURE


def test_acks_late_ignore_is_acked_in_that_branch_too(procs, client_app, redis_client):
    procs.worker("-c", "1", settings=json.dumps(NO_ACK_ON_FAILURE))
    client_app.ignore_counted.delay("ignored")
    assert client_app.add.delay(1, 2).get(timeout=10) == 3
    wait_for(lambda: queue_empty(client_app.app), 10, "the ignored message to be acked")
    assert redis_client.llen("ignored") == 1 and dead_letters(redis_client) == []


def test_a_result_that_will_not_encode_fails_that_task_alone(procs, client_app, redis_client):
    procs.worker("-c", "1", "--prefetch-multiplier", "8")
    before = client_app.pid.delay().get(timeout=10)
    # one group: the four go in one bulk send and land in one prefetched batch, whose writes leave together
    from minique import group
    bad, *good = group([client_app.circular.s()] + [client_app.add.s(i, i) for i in range(3)]).apply_async().results
    with pytest.raises(EncodeError, match="cannot encode the result"):
        bad.get(timeout=10)
    assert [r.get(timeout=10) for r in good] == [0, 2, 4]  # before the fix: WorkerLostError for these
    assert client_app.pid.delay().get(timeout=10) == before  # the same pool process: it did not die


@pytest.mark.parametrize("queue_type", ["streams", "lists"])
def test_malformed_records_are_dead_lettered_and_the_worker_goes_on(procs, client_app, redis_client, queue_type):
    conf = {"broker_transport_options": {"queue_type": queue_type}}
    procs.worker("-c", "1", settings=json.dumps(conf))
    msg = make("testapp.add", (1, 2))
    stream = keys.queue("default", 0)
    if queue_type == "streams":
        redis_client.xadd(stream, {"x": b"no message field"})
        redis_client.xadd(stream, {"m": msg.encode(), "d": b"many"})
        reasons = [b"malformed record: stream entry without its message field",
                   b"malformed record: delivery count b'many' is not a number"]
    else:
        redis_client.lpush(stream, b"\x00")                      # shorter than the 2-byte header
        redis_client.lpush(stream, b"\x00\x63" + msg.encode())   # priority byte 99
        reasons = [b"malformed record: list element without a valid 2-byte header"] * 2
    dead = wait_for(lambda: len(dead_letters(redis_client)) >= 2 and dead_letters(redis_client), 15,
                    "two dead letters")
    assert [d["reason"][:len(reason)] for d, reason in zip(dead, reasons)] == reasons
    from minique.result import AsyncResult
    with pytest.raises(Exception, match="dead-lettered: malformed record"):  # nobody waits on it forever
        AsyncResult(msg.id, app=client_app.app).get(timeout=10)
    app = client_app.app
    app.conf.broker_transport_options = conf["broker_transport_options"]
    assert client_app.add.delay(2, 3).get(timeout=10) == 5  # the same worker, still serving


@pytest.mark.parametrize("field,value", [("eta", "soon"), ("exp", [1]), ("tl", "x"), ("r", -1), ("p", 12)])
def test_wrongly_typed_envelope_fields_are_dead_lettered(procs, client_app, redis_client, field, value):
    procs.worker("-c", "1")
    msg = make("testapp.add", (1, 2))
    raw = serializers.unpack(msg.encode())
    raw[field] = value
    redis_client.xadd(keys.queue("default", 0), {"m": serializers.pack(raw)})
    dead = wait_for(lambda: dead_letters(redis_client), 15, "the dead letter")
    assert dead[0]["reason"].startswith(b"undecodable message") and field.encode() in dead[0]["reason"]
    from minique.result import AsyncResult
    with pytest.raises(Exception, match="dead-lettered"):
        AsyncResult(msg.id, app=client_app.app).get(timeout=10)
    assert client_app.add.delay(2, 3).get(timeout=10) == 5


def test_a_requeue_leaves_after_the_result_queued_before_it(redis_url, redis_client):
    """Results before acks: a requeue goes through the same pipe as the result written before it
    (before the fix it was sent at once on another connection, ahead of the result)."""
    from minique import Minique
    from minique.settle import Settlement
    from minique.worker.outbox import Outbox
    app = Minique("t", broker=redis_url, backend=redis_url)
    try:
        app.broker.ensure_queues(["default"])
        app.broker.send(redis_client, "default", 0, b"payload")
        [delivery] = app.broker.fetch("c", ["default"], 1, 0)
        outbox = Outbox(app, "c", ["default"], use_alarm=False)
        app.backend.store(outbox.backend, "tid", states.FAILURE, ValueError("x"))
        outbox.apply(delivery, Settlement(requeue=True), "tid", "h")
        sent = [args[0] for args, _ in outbox.broker.command_stack]
        assert sent.index("EVALSHA") > max(i for i, c in enumerate(sent) if c == "RPUSH")
        outbox.flush()
        assert app.backend.get_meta("tid")["status"] == states.FAILURE
        assert app.broker.fetch("c2", ["default"], 1, 0)[0].deliveries == 1
    finally:
        app.close()
