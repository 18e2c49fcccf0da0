"""Results as Celery shows them, through real workers: custom states from update_state while a task
runs, result_extended, AsyncResult.children."""
import sys
import time

import pytest

from minique import states
from minique.result import AsyncResult, GroupResult
from procs import APPS, wait_for


@pytest.fixture
def rapp(redis_url, monkeypatch):
    """tests/apps/resultsapp.py imported here (the client side), pointed at the test's Redis."""
    monkeypatch.setenv("MINIQUE_BROKER_URL", redis_url)
    monkeypatch.delenv("MINIQUE_RESULT_BACKEND", raising=False)
    monkeypatch.syspath_prepend(str(APPS))
    sys.modules.pop("resultsapp", None)
    import resultsapp
    yield resultsapp
    resultsapp.app.close()
    sys.modules.pop("resultsapp", None)


def _state_is(result, state, meta=None):
    return lambda: result.state == state and (meta is None or result.info == meta)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_progress_state_and_meta_are_seen_while_the_task_runs(procs, rapp, redis_client, pool):
    procs.worker("-c", "1", "-P", pool, app="resultsapp")
    key = f"p1-{pool}"
    r = rapp.progress.delay(key, total=2)
    wait_for(_state_is(r, "PROGRESS", {"done": 0, "total": 2}), 10, "the first PROGRESS")
    assert not r.ready() and r.result == {"done": 0, "total": 2}
    redis_client.rpush(f"{key}:gate", 1)
    wait_for(_state_is(r, "PROGRESS", {"done": 1, "total": 2}), 10, "the second PROGRESS")
    redis_client.rpush(f"{key}:gate", 1)
    assert r.get(timeout=10) == {"done": 2}  # the final state replaces the custom one
    assert r.state == states.SUCCESS and r.info == {"done": 2} and r.ready()


def test_progress_is_not_overwritten_by_a_deferred_started(procs, rapp, redis_client):
    """With track_started and a long early-ack window, the STARTED of a task that follows short ones
    may wait (deferred) while its body runs; update_state sends it first, so PROGRESS stays."""
    procs.worker("-c", "1", app="resultsapp", settings='{"task_track_started": true, '
                                                     '"worker_early_ack_window": 0.3}')
    for _ in range(3):
        rapp.noop.delay().get(timeout=10)
    warm = [rapp.noop.delay() for _ in range(5)]
    r = rapp.progress.delay("p2", total=1)
    wait_for(_state_is(r, "PROGRESS"), 10, "PROGRESS")
    assert all(w.get(timeout=10) is None for w in warm)
    time.sleep(0.5)  # longer than the window: a deferred STARTED would have landed by now (asserting an absence)
    assert r.state == "PROGRESS" and r.info == {"done": 0, "total": 1}
    redis_client.rpush("p2:gate", 1)
    assert r.get(timeout=10) == {"done": 1}


def test_update_state_under_a_soft_time_limit(procs, rapp, redis_client):
    procs.worker("-c", "1", app="resultsapp")
    r = rapp.progress_soft_limited.delay("p3")
    wait_for(_state_is(r, "PROGRESS", {"step": "one"}), 10, "PROGRESS")
    redis_client.rpush("p3:gate", 1)
    assert r.get(timeout=10) == "ok"


def test_update_state_from_outside_a_task_with_a_task_id(rapp):
    r = AsyncResult("outside-1", app=rapp.app)
    rapp.progress.update_state(task_id="outside-1", state="PROGRESS", meta={"done": 5})
    assert r.state == "PROGRESS" and r.info == {"done": 5} and not r.ready()
    rapp.progress.update_state(task_id="outside-1", state=states.SUCCESS, meta=42)
    assert r.get(timeout=5) == 42
    from minique.exceptions import EncodeError
    with pytest.raises(EncodeError):  # refused before anything is written
        rapp.progress.update_state(task_id="outside-2", state="PROGRESS", meta={"x": object()})
    assert AsyncResult("outside-2", app=rapp.app).state == states.PENDING


def test_result_extended_stores_name_args_kwargs_worker_queue_retries(procs, rapp):
    worker = procs.worker("-c", "1", app="resultsapp",
                          settings='{"result_extended": true, "task_track_started": true, '
                                   '"accept_content": ["json", "msgpack"]}')
    r = rapp.add.delay(2, y=3)
    assert r.get(timeout=10) == 5
    assert (r.name, r.args, r.kwargs, r.worker, r.queue, r.retries) == (
        "resultsapp.add", [2], {"y": 3}, worker.hostname, "default", 0)
    assert r.date_done is not None
    failed = rapp.spawn_then_fail.delay(7)
    with pytest.raises(ValueError):
        failed.get(timeout=10)
    assert (failed.name, failed.args, failed.kwargs) == ("resultsapp.spawn_then_fail", [7], {})
    # arguments sent with msgpack are stored with the result's serializer (json): bytes round-trip as
    # kombu's typed values (what json cannot encode at all is stored as its repr: test_results_unit.py)
    rapp.app.conf.accept_content = ["json", "msgpack"]
    b = rapp.takes_bytes.apply_async((b"\x00\x01",), {"flag": True}, serializer="msgpack")
    assert b.get(timeout=10) == 2
    assert b.args == [b"\x00\x01"] and b.name == "resultsapp.takes_bytes"
    # a custom state written while the task runs carries them too
    p = rapp.progress.apply_async(("p5",), {"total": 1})
    wait_for(_state_is(p, "PROGRESS"), 10, "PROGRESS")
    assert (p.name, p.args, p.kwargs, p.worker, p.queue) == (
        "resultsapp.progress", ["p5"], {"total": 1}, worker.hostname, "default")
    rapp.store().rpush("p5:gate", 1)
    assert p.get(timeout=10) == {"done": 1} and p.args == ["p5"]


def test_result_extended_off_stores_none_of_it(procs, rapp, redis_client):
    procs.worker("-c", "1", app="resultsapp")
    r = rapp.add.delay(1, 1)
    assert r.get(timeout=10) == 2
    assert (r.name, r.args, r.kwargs, r.worker, r.queue, r.retries) == (None,) * 6
    from minique import keys, serializers
    record = serializers.unpack(redis_client.lindex(keys.ready(r.id), 0))
    assert set(record) == {"id", "s", "ct", "r", "t"}  # no children, no extended fields


def test_children_are_the_tasks_and_groups_a_task_sent(procs, rapp):
    procs.worker("-c", "2", app="resultsapp")
    r = rapp.spawn.delay(10)
    a, b, gid, members = r.get(timeout=10)
    kids = r.children
    assert [type(k) for k in kids] == [AsyncResult, AsyncResult, GroupResult]
    assert kids[0].id == a and kids[1].id == b
    assert kids[2].id == gid and [m.id for m in kids[2].results] == members
    assert kids[0].get(timeout=10) == 11 and kids[1].get(timeout=10) == 12
    assert kids[2].get(timeout=10) == [10, 11, 12]
    failed = rapp.spawn_then_fail.delay(1)
    with pytest.raises(ValueError):
        failed.get(timeout=10)
    assert len(failed.children) == 1 and failed.children[0].get(timeout=10) == 2  # stored with a failure too
    assert rapp.add.delay(1, 2).children == []  # a task that sends nothing has none


def test_dashboard_task_page_shows_the_custom_state_and_its_meta(procs, rapp, redis_client):
    from test_dashboard import start_dashboard
    procs.worker("-c", "1", app="resultsapp")
    dash = start_dashboard(procs)
    r = rapp.progress.delay("p4", total=1)
    wait_for(_state_is(r, "PROGRESS"), 10, "PROGRESS")
    shown = wait_for(lambda: (lambda t: t if t["state"] == "PROGRESS" else None)(dash.get(f"/api/tasks/{r.id}")),
                     10, "the task page to show PROGRESS")
    assert shown["result_state"] == "PROGRESS" and shown["meta"] == {"done": 0, "total": 1}
    redis_client.rpush("p4:gate", 1)
    assert r.get(timeout=10) == {"done": 1}
    shown = wait_for(lambda: (lambda t: t if t["state"] == "SUCCESS" else None)(dash.get(f"/api/tasks/{r.id}")),
                     10, "the task page to show SUCCESS")
    assert shown["result"] == {"done": 1} and "meta" not in shown


def test_a_sent_chain_runs_its_own_link_and_link_error(procs, rapp, redis_client):
    """A chain's link gets the chain's result; its link_error runs when a step fails (given the id of
    the step that would have ended it, whose result holds the exception). Both were dropped for
    chains of two or more steps."""
    import json

    from minique import chain
    procs.worker("-c", "2", app="resultsapp")
    ok = chain(rapp.add.s(1, 2), rapp.add.s(10))
    ok.link(rapp.push_to.s("links"))
    assert ok.delay().get(timeout=10) == 13
    assert json.loads(redis_client.blpop("links", 10)[1]) == 13
    bad = chain(rapp.add.s(1, 2), rapp.fail.s(), rapp.add.s(1))
    bad.link_error(rapp.push_to.s("errbacks"))
    r = bad.delay()
    with pytest.raises(ValueError, match="step failed"):
        r.get(timeout=10)
    assert json.loads(redis_client.blpop("errbacks", 10)[1]) == r.id


def test_children_of_a_task_whose_class_has_hooks(procs, rapp, redis_client):
    procs.worker("-c", "1", app="resultsapp")
    r = rapp.spawn_hooked.delay(5)
    child_id = r.get(timeout=10)
    assert [c.id for c in r.children] == [child_id] and r.children[0].get(timeout=10) == 6
    assert redis_client.blpop(f"after_return:{r.id}", 10)[1] == b"SUCCESS"
