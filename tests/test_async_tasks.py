"""async def tasks in prefork and thread workers: each process (or thread) runs its bodies on one event
loop made once (minique/loop.py); bind, retries, soft time limits (cancellation at the await point) and
canvases work as for plain tasks."""
from __future__ import annotations

import pytest

from minique import chain
from minique.exceptions import SoftTimeLimitExceeded


@pytest.fixture
def aapp(redis_url, monkeypatch):
    from procs import drop_testapp, import_testapp
    mod = import_testapp(monkeypatch, redis_url, "asyncapp")
    yield mod
    drop_testapp(mod)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_async_tasks_run_on_a_loop_kept_per_process_or_thread(procs, aapp, pool):
    procs.worker("-c", "1", "-P", pool, app="asyncapp")
    assert aapp.double.delay(21).get(timeout=10) == 42
    first = aapp.whoami.delay()
    task_id, pid, loop_id = first.get(timeout=10)
    assert task_id == first.id
    _, pid2, loop_id2 = aapp.whoami.delay().get(timeout=10)
    assert (pid2, loop_id2) == (pid, loop_id)  # the same loop served both: made once, not per task
    assert chain(aapp.double.s(1), aapp.double.s(), aapp.double.s()).delay().get(timeout=10) == 8


def test_retries_and_the_soft_time_limit_of_async_tasks(procs, aapp, redis_client):
    procs.worker("-c", "1", app="asyncapp")
    assert aapp.flaky.delay("as:flaky").get(timeout=10) == "third time"
    assert int(redis_client.get("as:flaky")) == 3
    slow = aapp.slow.delay("as:slow")
    with pytest.raises(SoftTimeLimitExceeded):
        slow.get(timeout=10)
    assert redis_client.lrange("as:slow", 0, -1) == [b"cleaned up"]
    assert aapp.double.delay(5).get(timeout=10) == 10  # the process and its loop serve on


def test_eager_async_tasks(aapp):
    aapp.app.conf.task_always_eager = True
    assert aapp.double.delay(4).get() == 8
    assert chain(aapp.double.s(1), aapp.double.s()).apply_async().get() == 4
