"""Task hooks and signals through real CLI workers (tests/apps/hooksapp.py records what its hooks and
receivers saw in the Redis list `hooks:log`; the test waits on that list with BLPOP, never a sleep)."""
import json
import signal
import time

import pytest

from minique import Minique, signals

LOG = "hooks:log"


class Seen:
    """What hooksapp recorded, read as it arrives (BLPOP: the test wakes on each entry)."""

    def __init__(self, client):
        self.client = client
        self.entries: list = []

    def until(self, predicate, what: str, timeout: float = 20.0) -> list:
        deadline = time.monotonic() + timeout
        while not predicate(self.entries):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; saw {[e['kind'] for e in self.entries]}")
            popped = self.client.blpop([LOG], timeout=min(left, 1.0))
            if popped is not None:
                self.entries.append(json.loads(popped[1]))
        return self.entries

    def of(self, task_id: str) -> list:
        return [e for e in self.entries if e.get("task_id") == task_id]

    def kinds(self, task_id: str) -> list:
        return [e["kind"] for e in self.of(task_id)]

    def first(self, kind: str, task_id=None) -> dict:
        return next(e for e in self.entries if e["kind"] == kind and (task_id is None or e.get("task_id") == task_id))


@pytest.fixture
def seen(redis_client):
    redis_client.delete(LOG)
    return Seen(redis_client)


@pytest.fixture
def client(redis_url):
    app = Minique("client", broker=redis_url)
    yield app
    app.close()


def _done(seen, task_id, last="task_postrun"):
    return seen.until(lambda entries: any(e["kind"] == last and e.get("task_id") == task_id for e in entries),
                      f"{last} of {task_id}")


def test_hooks_and_task_signals_in_celerys_order_with_their_arguments(procs, client, seen):
    procs.worker("-c", "1", app="hooksapp")
    ok = client.send_task("hooksapp.double", (3,), {"y": 1})
    assert ok.get(timeout=20) == 7
    _done(seen, ok.id)
    assert seen.kinds(ok.id) == ["task_received", "task_prerun", "before_start", "on_success", "task_success",
                                 "after_return", "task_postrun"]
    assert seen.first("task_received", ok.id)["sender"] == "Consumer"
    assert seen.first("task_received", ok.id)["task"] == "hooksapp.double"
    assert seen.first("task_prerun", ok.id) == {
        "kind": "task_prerun", "pid": seen.first("task_prerun", ok.id)["pid"], "sender": "hooksapp.double",
        "task_id": ok.id, "task": "hooksapp.double", "args": [3], "kwargs": {"y": 1}}
    assert seen.first("before_start", ok.id)["request_id"] == ok.id
    on_success = seen.first("on_success", ok.id)
    assert (on_success["retval"], on_success["args"], on_success["kwargs"]) == (7, [3], {"y": 1})
    assert seen.first("task_success", ok.id)["result"] == 7 and seen.first("task_success", ok.id)["task_id"] == ok.id
    assert seen.first("after_return", ok.id)["status"] == "SUCCESS"
    assert seen.first("after_return", ok.id)["retval"] == "7"
    postrun = seen.first("task_postrun", ok.id)
    assert (postrun["state"], postrun["retval"], postrun["args"]) == ("SUCCESS", "7", [3])

    bad = client.send_task("hooksapp.fail", (5,))
    with pytest.raises(ValueError):
        bad.get(timeout=20)
    _done(seen, bad.id)
    assert seen.kinds(bad.id) == ["task_received", "task_prerun", "before_start", "on_failure", "task_failure",
                                  "after_return", "task_postrun"]
    on_failure = seen.first("on_failure", bad.id)
    assert on_failure["exc"] == "ValueError('failed 5')" and on_failure["args"] == [5]
    assert on_failure["einfo"] == ["ValueError", True, True] and on_failure["request_id"] == bad.id
    failure = seen.first("task_failure", bad.id)
    assert failure["exception"] == "ValueError('failed 5')" and failure["traceback"] is True
    assert failure["einfo"] == "ValueError" and failure["args"] == [5] and failure["sender"] == "hooksapp.fail"
    assert seen.first("after_return", bad.id)["status"] == "FAILURE"
    assert seen.first("after_return", bad.id)["einfo"] == "ValueError"
    assert seen.first("task_postrun", bad.id)["state"] == "FAILURE"


def test_autoretry_is_on_retry_then_on_failure_at_max_retries(procs, client, seen):
    procs.worker("-c", "1", app="hooksapp")
    flaky = client.send_task("hooksapp.flaky")
    with pytest.raises(KeyError):
        flaky.get(timeout=20)
    seen.until(lambda entries: sum(e["kind"] == "task_postrun" and e.get("task_id") == flaky.id
                                   for e in entries) == 2, "both runs of flaky")
    kinds = [k for k in seen.kinds(flaky.id) if k not in ("task_received", "before_start")]
    assert kinds == ["task_prerun", "on_retry", "task_retry", "task_postrun",
                     "task_prerun", "on_failure", "task_failure", "after_return", "task_postrun"]
    on_retry = seen.first("on_retry", flaky.id)
    assert on_retry["exc"] == "KeyError('flaky')" and on_retry["einfo"] == "ExceptionInfo"
    assert on_retry["retries"] == 0
    retry = seen.first("task_retry", flaky.id)
    assert (retry["reason"], retry["cause"], retry["einfo"]) == ("Retry", "KeyError('flaky')", "ExceptionInfo")
    assert seen.first("task_postrun", flaky.id)["state"] == "RETRY"
    assert seen.first("on_failure", flaky.id)["retries"] == 1


def test_a_raising_hook_changes_nothing_and_an_overridden_call_runs(procs, client, seen):
    proc = procs.worker("-c", "1", app="hooksapp")
    ok = client.send_task("hooksapp.broken_ok")
    bad = client.send_task("hooksapp.broken_fail")
    wrapped = client.send_task("hooksapp.in_session", (4,))
    assert ok.get(timeout=20) == "ok" and ok.state == "SUCCESS"
    with pytest.raises(ValueError, match="still a failure"):
        bad.get(timeout=20)
    assert wrapped.get(timeout=20) == 4
    _done(seen, wrapped.id)
    _done(seen, bad.id)
    assert "broken_on_success" in seen.kinds(ok.id) and "broken_on_failure" in seen.kinds(bad.id)
    assert [k for k in seen.kinds(wrapped.id) if k.startswith(("call_", "body"))] == ["call_enter", "body",
                                                                                      "call_exit"]
    log = proc.log()
    assert "before_start hook raised" in log and "on_success hook raised" in log
    assert "on_failure hook raised" in log and "after_return hook raised" in log
    # the message of each was settled once: nothing left pending, nothing dead-lettered
    assert client.broker_client.xlen("minique:dlq") == 0


def test_revoked_expired_unknown_and_rejected_signals(procs, client, seen, redis_client):
    revoked_id = "revoked-before-run"
    client.control.revoke(revoked_id)
    client.send_task("hooksapp.plain", (1,), task_id=revoked_id)
    expired = client.send_task("hooksapp.plain", (2,), expires=-1)
    unknown = client.send_task("hooksapp.nope", (3,))
    client.broker.send_now("default", 0, b"\xc1 not a message")
    procs.worker("-c", "1", app="hooksapp")
    seen.until(lambda entries: {"task_unknown", "task_rejected"} <= {e["kind"] for e in entries}
               and sum(e["kind"] == "task_revoked" for e in entries) == 2, "revoked, unknown, rejected")
    assert seen.first("task_revoked", revoked_id) == {**seen.first("task_revoked", revoked_id),
                                                      "sender": "hooksapp.plain", "terminated": False,
                                                      "expired": False}
    assert seen.first("task_revoked", expired.id)["expired"] is True
    assert seen.first("task_unknown") == {**seen.first("task_unknown"), "sender": "Consumer",
                                          "name": "hooksapp.nope", "task_id": unknown.id, "exc": "NotRegistered",
                                          "message": "Delivery"}
    assert seen.first("task_rejected") == {**seen.first("task_rejected"), "sender": "Consumer",
                                           "exc": "DecodeError", "message": "Delivery"}


def test_terminated_and_time_limited_tasks_are_announced_by_the_parent(procs, client, seen):
    proc = procs.worker("-c", "1", app="hooksapp")
    killed = client.send_task("hooksapp.stuck", time_limit=30)
    seen.until(lambda entries: any(e["kind"] == "stuck_started" for e in entries), "the task to start")
    client.control.revoke(killed.id, terminate=True)
    seen.until(lambda entries: any(e["kind"] == "task_revoked" for e in entries), "task_revoked")
    revoked = seen.first("task_revoked", killed.id)
    assert revoked["terminated"] is True and revoked["expired"] is False and revoked["pid"] == proc.pid

    timed_out = client.send_task("hooksapp.stuck")  # its own time_limit: 1s
    seen.until(lambda entries: any(e["kind"] == "task_failure" and e["task_id"] == timed_out.id for e in entries),
               "the time limit's task_failure")
    on_failure = seen.first("on_failure", timed_out.id)
    assert "TimeLimitExceeded" in on_failure["exc"] and on_failure["pid"] == proc.pid
    assert seen.first("task_failure", timed_out.id)["exception"] == on_failure["exc"]


def test_worker_signals_in_order_and_process_init_in_each_child(procs, seen):
    proc = procs.worker("-c", "2", app="hooksapp")
    seen.until(lambda entries: sum(e["kind"] == "worker_process_init" for e in entries) == 2
               and any(e["kind"] == "worker_ready" for e in entries), "two pool children and worker_ready")
    start = [e["kind"] for e in seen.entries if e["kind"] != "worker_process_init"]
    assert start == ["after_setup_logger", "after_setup_task_logger", "celeryd_init", "worker_init",
                     "import_modules", "celeryd_after_setup", "worker_ready"]
    assert seen.first("celeryd_init")["sender"] == proc.hostname and seen.first("celeryd_init")["concurrency"] == 2
    assert seen.first("worker_init")["sender"] == "Worker" and seen.first("worker_ready")["sender"] == "Worker"
    assert seen.first("after_setup_logger")["loglevel"] == 20 and seen.first("after_setup_logger")["handlers"] == 1
    assert seen.first("after_setup_task_logger")["logger"] == "minique.task"
    inits = [e for e in seen.entries if e["kind"] == "worker_process_init"]
    assert {e["parent"] for e in inits} == {proc.pid} and len({e["pid"] for e in inits}) == 2
    assert all(e["pid"] != proc.pid and e["sender"] is None for e in inits)
    children = {e["pid"] for e in inits}

    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    seen.until(lambda entries: any(e["kind"] == "worker_shutdown" for e in entries), "worker_shutdown")
    end = [e for e in seen.entries if e["kind"] in ("worker_shutting_down", "worker_process_shutdown",
                                                    "worker_shutdown")]
    assert [e["kind"] for e in end] == ["worker_shutting_down", "worker_process_shutdown",
                                        "worker_process_shutdown", "worker_shutdown"]
    assert end[0]["sig"] == "SIGTERM" and end[0]["how"] == "Warm" and end[0]["sender"] == proc.hostname
    assert {e["child"] for e in end[1:3]} == children and all(e["exitcode"] == 0 for e in end[1:3])
    assert all(e["pid"] == e["child"] for e in end[1:3])  # sent in the child itself
    assert end[3]["pid"] == proc.pid and end[3]["sender"] == "Worker"


def test_setup_logging_receiver_takes_logging_over(procs, seen):
    env = procs.env(extra={"HOOKSAPP_SETUP_LOGGING": "1"})
    procs.worker("-c", "1", app="hooksapp", env=env)
    entries = seen.until(lambda entries: any(e["kind"] == "worker_ready" for e in entries), "worker_ready")
    kinds = [e["kind"] for e in entries]
    assert kinds[0] == "setup_logging" and seen.first("setup_logging")["loglevel"] == 20
    assert seen.first("setup_logging")["root_handlers"] == 0
    assert "after_setup_logger" not in kinds and "after_setup_task_logger" not in kinds


def test_beat_init(procs, seen):
    beat = procs.beat(app="hooksapp")
    seen.until(lambda entries: any(e["kind"] == "beat_init" for e in entries), "beat_init")
    assert seen.first("beat_init")["sender"] == "Beat" and seen.first("beat_init")["pid"] == beat.pid


@pytest.fixture
def publish_receivers():
    """Receivers in this process (the client): one adds a tracing header, each records what it got."""
    got: list = []

    def before(sender=None, body=None, exchange=None, routing_key=None, headers=None, properties=None, **kw):
        got.append(("before", sender, body, exchange, routing_key, dict(headers), properties))
        headers["traceparent"] = f"00-{headers['id']}"

    def after(sender=None, body=None, exchange=None, routing_key=None, headers=None, **kw):
        got.append(("after", sender, headers["id"], routing_key, headers.get("traceparent")))

    signals.before_task_publish.connect(before, weak=False)
    signals.after_task_publish.connect(after, weak=False)
    yield got
    signals.before_task_publish.disconnect(before)
    signals.after_task_publish.disconnect(after)


def test_before_task_publish_headers_reach_the_worker_on_every_send_path(procs, client, publish_receivers):
    procs.worker("-c", "1", app="hooksapp")
    one = client.send_task("hooksapp.headers_seen", headers={"tenant": "t1"})
    assert one.get(timeout=20) == [{"tenant": "t1", "traceparent": f"00-{one.id}"}, f"00-{one.id}"]
    before, after = publish_receivers[0], publish_receivers[1]
    assert before[1:5] == ("hooksapp.headers_seen", ([], {}, {"callbacks": None, "errbacks": None, "chain": None,
                                                               "chord": None}), "", "default")
    headers = before[5]
    assert headers["id"] == one.id and headers["task"] == "hooksapp.headers_seen" and headers["tenant"] == "t1"
    assert headers["lang"] == "py" and headers["retries"] == 0 and before[6]["correlation_id"] == one.id
    assert after == ("after", "hooksapp.headers_seen", one.id, "default", f"00-{one.id}")

    # the bulk path (many calls of one task, templated when nothing listens) builds each message alone
    publish_receivers.clear()
    many = client.send_many("hooksapp.headers_seen", [((), None)] * 3)
    for r in many:
        assert r.get(timeout=20)[1] == f"00-{r.id}"
    assert sorted(g[2] for g in publish_receivers if g[0] == "after") == sorted(r.id for r in many)
    assert all(g[1] == "hooksapp.headers_seen" for g in publish_receivers)

