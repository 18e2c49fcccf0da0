"""The worker as users run it: a real `minique worker` subprocess against a private Redis."""
import json

import pytest

from minique import states
from minique.exceptions import NotRegistered, TimeLimitExceeded, WorkerLostError
from procs import Fault, wait_for


def test_delay_get_state(procs, client_app):
    procs.worker("-c", "2")
    r = client_app.add.delay(2, 3)
    assert r.get(timeout=10) == 5
    assert r.state == states.SUCCESS
    assert r.ready() and r.successful() and not r.failed()
    assert r.date_done is not None


def test_typed_json_values_reach_the_task_and_come_back_typed(procs, client_app):
    """bytes, datetime, date, time, UUID and Decimal through the json serializer (kombu's typed JSON)
    both ways: the task receives them with their types, and get() gives the same typed values."""
    import datetime
    import decimal
    import uuid
    procs.worker("-c", "1")
    when = datetime.datetime(2026, 11, 30, 18, 5, 1, 250, tzinfo=datetime.timezone.utc)
    args = [b"\x00\xffraw", b"text", when, datetime.datetime(2026, 1, 2, 3, 4), uuid.uuid4(), decimal.Decimal("9.90")]
    kwargs = {"day": datetime.date(2026, 11, 30), "at": datetime.time(18, 5)}
    got_args, got_kwargs, arg_types, kwarg_types = client_app.typed_echo.delay(*args, **kwargs).get(timeout=10)
    assert arg_types == ["bytes", "bytes", "datetime", "datetime", "UUID", "Decimal"]
    assert kwarg_types == {"day": "date", "at": "time"}
    assert got_args == args and got_kwargs == kwargs
    assert [type(v) for v in got_args] == [type(v) for v in args]
    assert got_args[2].tzinfo is not None and got_args[3].tzinfo is None and str(got_args[5]) == "9.90"


def test_delay_many_sends_each_call_with_the_shared_options(procs, client_app):
    procs.worker("-c", "2", "-Q", "default,other")
    results = client_app.add.delay_many([(i, i) for i in range(2500)], priority=7, countdown=0.2)
    assert len({r.id for r in results}) == 2500
    assert [r.get(timeout=20) for r in results] == [2 * i for i in range(2500)]
    assert client_app.add.delay_many([(1, 2)], queue="other")[0].get(timeout=10) == 3
    with pytest.raises(TypeError, match="cannot serialize"):
        client_app.add.delay_many([(object(), 1)])


def test_a_process_running_long_tasks_reserves_at_most_its_prefetch(procs, client_app, redis_client):
    import time
    procs.worker("-c", "1", "--prefetch-multiplier", "2")
    results = [client_app.sleep_record.delay("pf", i, 0.2) for i in range(8)]
    held, deadline = [], time.monotonic() + 20
    while not results[-1].ready() and time.monotonic() < deadline:  # sample what the consumer holds
        held.append(redis_client.xpending("minique:{default}:p0", "minique")["pending"])
        time.sleep(0.01)
    assert [r.get(timeout=10) for r in results] == list(range(8))
    # early ack: the running message is acked, so what Redis shows held is what the process reserves;
    # after a long task there is no fetch-ahead, so never more than the prefetch (2)
    assert 1 <= max(held) <= 2, held


def test_failure_is_reraised_with_its_class_and_traceback(procs, client_app):
    procs.worker("-c", "1")
    r = client_app.fail.delay("bad input")
    with pytest.raises(ValueError, match="bad input"):
        r.get(timeout=10)
    assert r.state == states.FAILURE
    assert "ValueError" in r.traceback
    assert isinstance(r.result, ValueError)
    assert r.get(timeout=1, propagate=False).args == ("bad input",)


@pytest.mark.fault  # kills a pool child
def test_killed_child_fails_task_with_worker_lost_and_worker_keeps_serving(procs, client_app):
    worker = procs.worker("-c", "2")
    children_before = set(worker.children())
    r = client_app.die.delay()
    with pytest.raises(WorkerLostError):
        r.get(timeout=15)
    assert client_app.add.delay(1, 1).get(timeout=10) == 2
    wait_for(lambda: len(worker.children()) == 2, 10, "the pool to be whole again")
    assert set(worker.children()) != children_before


def test_garbage_message_is_dead_lettered_and_next_one_runs(procs, client_app, redis_client):
    procs.worker("-c", "1")
    redis_client.xadd("minique:{default}:p0", {"m": b"\x00garbage\xff"})
    assert client_app.add.delay(2, 2).get(timeout=10) == 4
    dead = wait_for(lambda: redis_client.xrange("minique:dlq"), 10, "a dead letter")
    assert dead[0][1][b"m"] == b"\x00garbage\xff"
    assert b"undecodable" in dead[0][1][b"reason"]


def test_unknown_task_is_dead_lettered_and_fails_clearly(procs, client_app, redis_client):
    procs.worker("-c", "1")
    r = client_app.app.send_task("testapp.no_such_task", (1,))
    with pytest.raises(NotRegistered, match="no_such_task"):
        r.get(timeout=10)
    dead = wait_for(lambda: redis_client.xrange("minique:dlq"), 10, "a dead letter")
    assert b"unknown task" in dead[0][1][b"reason"]
    assert dead[0][1][b"task_id"].decode() == r.id


def test_wrong_argument_count_fails_clearly(procs, client_app):
    procs.worker("-c", "1")
    r = client_app.add.delay(1)
    with pytest.raises(TypeError, match="wrong arguments"):
        r.get(timeout=10)


def test_routing_by_queue_option_and_task_routes(procs, client_app):
    procs.worker("-c", "1", "-Q", "other")
    client_app.app.conf.task_routes = {"testapp.who*": {"queue": "other"}}
    assert client_app.whoami.delay().get(timeout=10)["queue"] == "other"
    assert client_app.add.apply_async((1, 2), queue="other").get(timeout=10) == 3


def test_priority_higher_runs_first(procs, client_app, redis_client):
    calls = [client_app.record.apply_async(("order", f"p{p}"), priority=p) for p in (0, 9, 3, 9, 0)]
    procs.worker("-c", "1", "--prefetch-multiplier", "1")
    for c in calls:
        c.get(timeout=10)
    assert [x.decode() for x in redis_client.lrange("order", 0, -1)] == ["p9", "p9", "p3", "p0", "p0"]


def test_ignore_result_keeps_no_state(procs, client_app, redis_client):
    procs.worker("-c", "1")
    r = client_app.record.apply_async(("ignored", "x"), ignore_result=True)
    wait_for(lambda: redis_client.llen("ignored"), 10, "the task to run")
    assert r.state == states.PENDING


def test_get_inside_a_task_is_refused_unless_asked(client_app):
    from minique import context
    from minique.context import Request
    context.push(Request(id="x", task="t"))
    try:
        with pytest.raises(RuntimeError, match="Never call result.get"):
            client_app.add.AsyncResult("whatever").get(timeout=0.1)
    finally:
        context.pop()


def test_hard_time_limit_kills_and_replaces_the_child(procs, client_app):
    procs.worker("-c", "1")
    r = client_app.hard_limited.delay()
    with pytest.raises(TimeLimitExceeded):
        r.get(timeout=15)
    assert client_app.add.delay(3, 4).get(timeout=10) == 7


def test_soft_time_limit_is_catchable(procs, client_app):
    procs.worker("-c", "1")
    assert client_app.soft_limited.delay().get(timeout=10) == "cleaned up"


def test_max_tasks_per_child_recycles_without_losing_tasks(procs, client_app, redis_client):
    procs.worker("-c", "1", "--max-tasks-per-child", "3")
    pids = [client_app.pid.delay().get(timeout=10) for _ in range(7)]
    assert len(set(pids)) == 3  # 3 + 3 + 1
    assert pids[0] == pids[2] != pids[3]


def test_warm_shutdown_finishes_running_task_and_exits_zero(procs, client_app, redis_client):
    worker = procs.worker("-c", "1")
    r = client_app.sleep_record.delay("warm", "t1", 1.0)
    wait_for(lambda: redis_client.llen("warm:started"), 10, "the task to start")
    Fault.SIGTERM.inject(worker)
    assert worker.wait(15) == 0
    assert r.get(timeout=1) == "t1"


def test_cli_call_and_result(procs, client_app, tmp_path):
    import subprocess
    import sys
    procs.worker("-c", "1")
    env = procs.env()
    out = subprocess.run([sys.executable, "-m", "minique.cli", "-A", "testapp", "call", "testapp.add",
                          "--args", "[20, 22]", "--wait", "10"], env=env, cwd=procs.tmp_path, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    task_id, value = out.stdout.split()
    assert json.loads(value) == 42
    out = subprocess.run([sys.executable, "-m", "minique.cli", "-A", "testapp", "result", task_id], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith("SUCCESS: 42")
