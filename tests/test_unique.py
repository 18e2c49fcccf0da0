"""Unique tasks (issue 20): a second send while the first waits or runs gives the first's AsyncResult;
the key is released when the task's run is over for good (or as it starts, with unique_until="started"),
kept across a retry, and released on failure and revoke."""
from __future__ import annotations

import pytest

from minique import keys, settle as fate
from minique.exceptions import TaskRevokedError
from minique.settle import Outcome, Policy, Settlement, releases, settle
from minique.unique import key_for
from procs import wait_for


@pytest.fixture
def client(redis_url, monkeypatch):
    """rlapp imported here: a task's own `unique` option is known where its module is imported."""
    from procs import drop_testapp, import_testapp
    rlapp = import_testapp(monkeypatch, redis_url, "rlapp")
    yield rlapp.app
    drop_testapp(rlapp)


def test_keys_and_which_settlements_release():
    assert key_for("t", (1, {"b": 2, "a": 1}), {}) == key_for("t", [1, {"a": 1, "b": 2}], None)
    assert key_for("t", (1,), {}) != key_for("t", (2,), {}) != key_for("u", (1,), {})
    policy = Policy()
    assert releases(fate.SUCCESS, settle(Outcome(fate.SUCCESS), policy))
    assert releases(fate.FAILURE, settle(Outcome(fate.FAILURE, ValueError()), policy))
    assert releases(fate.REVOKED, settle(Outcome(fate.REVOKED), policy))
    assert not releases(fate.RETRY, Settlement(retry=True))
    assert not releases(fate.THROTTLED, settle(Outcome(fate.THROTTLED), policy))
    assert not releases(fate.REPLAYED, settle(Outcome(fate.REPLAYED, reason="r"), policy))  # its original runs


def test_a_second_send_while_the_first_waits_or_runs_gives_the_first(procs, client, redis_client):
    first = client.send_task("rlapp.sync_account", ("acme", "uniq:gate1"))
    again = client.send_task("rlapp.sync_account", ("acme", "uniq:gate1"))   # waiting: the same task
    other = client.send_task("rlapp.sync_account", ("globex", "uniq:gate1"))  # other arguments: its own
    assert again.id == first.id and other.id != first.id
    assert redis_client.get(keys.unique(key_for("rlapp.sync_account", ("acme", "uniq:gate1"), {}))) \
        == first.id.encode()
    procs.worker("-c", "2", app="rlapp")
    wait_for(lambda: redis_client.llen("uniq:ran:acme"), 10, "the first to run")
    assert client.send_task("rlapp.sync_account", ("acme", "uniq:gate1")).id == first.id
    redis_client.rpush("uniq:gate1", 1, 1)
    assert first.get(timeout=10) == "acme" and other.get(timeout=10) == "globex"
    after = client.send_task("rlapp.sync_account", ("acme", "uniq:gate2"))  # finished: released
    explicit = client.send_task("rlapp.sync_account", ("acme", "uniq:gate2"), unique_key="acme-sync")
    assert after.id != first.id and explicit.id not in (first.id, after.id)
    redis_client.rpush("uniq:gate2", 1, 1)
    assert after.get(timeout=10) == "acme" and explicit.get(timeout=10) == "acme"
    assert redis_client.llen("uniq:ran:acme") == 3


def test_until_started_releases_as_it_starts(procs, client, redis_client):
    procs.worker("-c", "1", app="rlapp")
    first = client.send_task("rlapp.report", ("mon", "uniq:gate3"))
    wait_for(lambda: redis_client.llen("uniq:report:mon"), 10, "the first to start")
    second = client.send_task("rlapp.report", ("mon", "uniq:gate3"))  # the first runs: a new one waits
    assert second.id != first.id
    assert client.send_task("rlapp.report", ("mon", "uniq:gate3")).id == second.id
    redis_client.rpush("uniq:gate3", 1, 1)
    assert first.get(timeout=10) == "mon" and second.get(timeout=10) == "mon"


def test_kept_across_a_retry_released_on_revoke(procs, client, redis_client):
    procs.worker("-c", "1", app="rlapp")
    flaky = client.send_task("rlapp.flaky_unique", ("uniq:flaky",))
    assert flaky.get(timeout=10) == "ok" and int(redis_client.get("uniq:flaky")) == 2
    assert not redis_client.exists(keys.unique(key_for("rlapp.flaky_unique", ("uniq:flaky",), {})))
    late = client.send_task("rlapp.sync_account", ("initech", "uniq:gate4"), countdown=60)
    assert client.send_task("rlapp.sync_account", ("initech", "uniq:gate4")).id == late.id
    client.control.revoke(late.id)
    with pytest.raises(TaskRevokedError):
        late.get(timeout=10)
    assert late.state == "REVOKED"
    fresh = client.send_task("rlapp.sync_account", ("initech", "uniq:gate4"))
    assert fresh.id != late.id
    redis_client.rpush("uniq:gate4", 1)
    assert fresh.get(timeout=10) == "initech"
