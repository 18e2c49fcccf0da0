"""Redis Cluster: a real 3-master cluster (tests/redis_multi.py), a client and CLI workers on it.

The queues of one worker live on different masters (`default` and `priority_high`, and `low` on the
third), so every fetch, read, script and write of the worker's paths must stay within one slot
(the cluster refuses CROSSSLOT) and reach the right node.
"""
from __future__ import annotations

import json

import pytest

from minique import chain, chord, group
from minique.keys import hash_slot, queue
from monitor import Recorder, slot_problems
from procs import Processes, Sending, drop_testapp, import_testapp, wait_for
from redis_multi import Cluster, server_supports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_why = server_supports("cluster")
if _why:
    pytest.skip(_why, allow_module_level=True)

QUEUES = ("default", "priority_high", "low")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


@pytest.fixture
def app(cluster, monkeypatch):
    cluster.flushall()
    testapp = import_testapp(monkeypatch, cluster.url())
    yield testapp.app
    drop_testapp(testapp)


def _worker(tmp_path, cluster, app, *args, settings=None):
    procs = Processes(tmp_path, cluster.url())
    proc = procs.worker("-c", "2", *args, settings=json.dumps(settings or {}), wait=False)

    def ready():
        if proc.popen.poll() is not None:
            raise AssertionError(f"worker exited with {proc.popen.returncode}:\n{proc.log()}")
        return app.broker_client.hexists("minique:workers", proc.hostname)
    wait_for(ready, 20, "the worker's first heartbeat")
    return procs, proc


def test_the_queues_live_on_three_masters(cluster):
    owners = {cluster.master_of(hash_slot(queue(q))).port for q in QUEUES}
    assert len(owners) == 3


def test_a_database_number_is_refused(cluster):
    from minique import Minique
    from minique.exceptions import ConfigurationError
    app = Minique("x", broker=cluster.url().rstrip("/") + "/2")
    with pytest.raises(ConfigurationError, match="only database 0"):
        app.broker_client.ping()


def test_worker_on_queues_of_different_masters_runs_tasks_a_chain_and_a_chord(tmp_path, cluster, app):
    """Every command each master runs is recorded (MONITOR): no script, transaction or multi-key
    command of the client's or the worker's paths spans two slots (tests/monitor.py)."""
    recorders = [Recorder(server.port) for server in cluster.masters]
    procs, proc = _worker(tmp_path, cluster, app, "-Q", ",".join(QUEUES))
    try:
        add, tsum = app.tasks["testapp.add"], app.tasks["testapp.tsum"]
        results = [add.apply_async((i, i), queue=QUEUES[i % 3], priority=i % 10) for i in range(30)]
        assert [r.get(timeout=30) for r in results] == [2 * i for i in range(30)]
        bulk = app.send_many("testapp.add", [((i, 1), None) for i in range(50)], queue="priority_high")
        assert [r.get(timeout=30) for r in bulk] == [i + 1 for i in range(50)]
        later = add.apply_async((20, 1), countdown=0.3, queue="low")  # through the delayed set
        assert later.get(timeout=30) == 21
        c = chain(add.s(1, 2).set(queue="default"), add.s(3).set(queue="priority_high"), add.s(4).set(queue="low"))
        assert c.apply_async().get(timeout=30) == 10
        ch = chord([add.s(i, i).set(queue=QUEUES[i % 3]) for i in range(6)], tsum.s().set(queue="low"))
        assert ch.apply_async().get(timeout=30) == sum(2 * i for i in range(6))
        g = group(add.s(i, 0).set(queue=QUEUES[i % 3]) for i in range(9)).apply_async()
        assert g.get(timeout=30) == list(range(9))
        assert proc.popen.poll() is None
        assert any(proc.hostname in reply for reply in app.control.ping(timeout=2.0))  # pub/sub on a cluster
        assert "CROSSSLOT" not in proc.log() and "Traceback" not in proc.log(), proc.log()
        commands = [c for r in recorders for c in r.stop()]
        recorders = []
        assert slot_problems(commands) == []
        names = {args[0].upper() for _, args in commands if args}
        assert {b"EVALSHA", b"XREADGROUP", b"XACK", b"XADD", b"RPUSH", b"ZADD"} <= names, names
        scripts = {args[1] for _, args in commands if args and args[0].upper() == b"EVALSHA"}
        assert len(scripts) >= 3  # fetch, move_due, chord_join at least
    except BaseException:
        print(proc.log())
        raise
    finally:
        for r in recorders:
            r.stop()
        procs.close()


def test_a_worker_blocked_on_three_nodes_wakes_for_any(tmp_path, cluster, app):
    """Idle, the worker blocks on each node at once: a message on any queue is taken at once."""
    procs, proc = _worker(tmp_path, cluster, app, "-Q", ",".join(QUEUES), "-c", "1")
    try:
        add = app.tasks["testapp.add"]
        for n, q in enumerate(QUEUES * 2):
            assert add.apply_async((n, 0), queue=q).get(timeout=10) == n
    finally:
        procs.close()


def test_dead_letter_replay_across_slots(cluster, app):
    broker = app.broker
    broker.dead_letter(app.broker_client, b"payload", "test", "default")
    (entry_id, fields), = broker.dead_letters()
    assert broker.replay_dead_letter(entry_id, "priority_high")
    assert broker.dead_letters() == []
    assert broker.length("priority_high", 0) == 1


@pytest.mark.timeout(180)
def test_killing_the_master_of_a_queues_slot_during_tasks(tmp_path, monkeypatch):
    """kill -9 of the master that owns `default`'s slot while 2,000 acks-late tasks flow (its replica
    takes over after the node time-out, 1 s here): every task still ends SUCCESS."""
    import time

    c = Cluster(tmp_path / "c", masters=3, replicas=1, node_timeout_ms=1000).start()
    testapp = import_testapp(monkeypatch, c.url())
    try:
        app = testapp.app
        procs, proc = _worker(tmp_path, c, app, "-Q", "default,priority_high", settings={"task_acks_late": True})
        add = app.tasks["testapp.add"]
        sending = Sending(2000, lambda i: add.apply_async((i, 0), queue=("default", "priority_high")[i % 2]), 600)
        try:
            with sending.during(proc, log_tail=5000):
                victim = c.master_of(hash_slot(queue("default")))
                victim.kill()
                killed = time.monotonic()
                sending.all_returned_their_index(90)
                done = time.monotonic() - killed
                print(f"all {len(sending.sent)} tasks SUCCESS {done:.1f}s after the kill")
                assert done < 1.0 + 20  # the node time-out, an election, and the last sends' and tasks' time
        finally:
            procs.close()
    finally:
        drop_testapp(testapp)
        c.stop()


@pytest.mark.timeout(180)
def test_a_slot_migrated_while_tasks_flow(tmp_path, monkeypatch):
    """`default`'s slot moves to another master (IMPORTING/MIGRATING, key by key) while tasks are sent
    and run: ASK and MOVED redirections, TRYAGAIN on scripts whose keys are split for a moment; every
    task ends SUCCESS and the worker keeps reading from the slot's new master."""

    c = Cluster(tmp_path / "c", masters=3).start()
    testapp = import_testapp(monkeypatch, c.url())
    try:
        app = testapp.app
        procs, proc = _worker(tmp_path, c, app, "-Q", "default,priority_high", settings={"task_acks_late": True})
        add = app.tasks["testapp.add"]
        sending = Sending(1500, lambda i: add.apply_async((i, 0), queue="default", priority=i % 3), 300)
        try:
            with sending.during(proc, log_tail=5000):
                slot = hash_slot(queue("default"))
                source = c.master_of(slot)
                target = next(m for m in c.masters if m is not source)
                assert c.migrate_slot(slot, target, pause=0.05) >= 3  # the streams (3 priorities) and more
                sending.all_returned_their_index(90)
                after = add.apply_async((1, 1), queue="default")
                assert after.get(timeout=20) == 2
                assert source.client().dbsize() == 0 or not any(
                    hash_slot(k) == slot for k in source.client().keys("*"))
        finally:
            procs.close()
    finally:
        drop_testapp(testapp)
        c.stop()


def test_dashboard_state_metrics_and_replay_on_a_cluster(cluster, app):
    """The dashboard's view (queues, workers, metrics: SCAN over every node) and its dead-letter replay
    (no cross-slot transaction on a cluster) work on a cluster."""
    from minique.dashboard.server import Dashboard

    msg = app.build_message("testapp.add", (1, 2), {}, {"queue": "low"})
    app.broker.dead_letter(app.broker_client, msg.encode(), "test", "low", msg.id)
    for q in ("default", "priority_high"):  # (keys on two nodes: SCAN must cover every master)
        app.broker.send(app.broker_client, q, 0, app.build_message("testapp.add", (0, 0)).encode())
    dash = Dashboard(app)
    assert app.broker.queues_known() == ["default", "priority_high"]
    from prometheus_client import generate_latest
    assert b"minique_queue_length" in generate_latest(dash.registry)
    (entry, _), = app.broker.dead_letters()
    answer = dash.replay(entry)
    assert answer["ok"] and app.broker.dead_letters() == []
    assert app.broker.length("low", 0) == 1


def test_revoke_beat_and_the_lists_broker_on_a_cluster(tmp_path, cluster, app):
    """revoke (the revoked set, the delayed set searched and brought forward, the broadcast), beat (its
    lease and claims) and a Lists-broker worker over queues on different masters."""
    import threading

    from minique import states
    from minique.beat import Beat

    procs, proc = _worker(tmp_path, cluster, app, "-Q", "default,low",
                          settings={"broker_transport_options": {"queue_type": "lists"}})
    try:
        lists_app = app  # the client must use the same queue type as the worker
        lists_app.conf.broker_transport_options = {"queue_type": "lists"}
        lists_app._reset()
        add = lists_app.tasks["testapp.add"]
        assert [add.apply_async((i, 1), queue=("default", "low")[i % 2]).get(timeout=20) for i in range(6)] == \
            [i + 1 for i in range(6)]
        later = add.apply_async((1, 1), countdown=30, queue="low")
        later.revoke()
        wait_for(lambda: later.state == states.REVOKED, 20, "the delayed task settled REVOKED")

        lists_app.conf.beat_schedule = {"tick": {"task": "testapp.add", "schedule": 0.2, "args": (2, 3),
                                                 "options": {"queue": "default"}}}
        beat = Beat(lists_app)
        runner = threading.Thread(target=beat.run, daemon=True)
        runner.start()
        try:
            wait_for(lambda: beat.leadership.is_set(), 10, "beat to lead")
            wait_for(lambda: lists_app.broker_client.hlen("minique:beat:last") == 1
                     and "succeeded" in proc.log() and proc.log().count(": 5") >= 2, 20, "beat's runs done")
        finally:
            beat.stop()
            runner.join(10)
        assert proc.popen.poll() is None
        assert "CROSSSLOT" not in proc.log() and "Traceback" not in proc.log(), proc.log()
    except BaseException:
        print(proc.log()[-4000:])
        raise
    finally:
        procs.close()


def test_scripts_flushed_on_every_node_are_loaded_again(tmp_path, cluster, app):
    """SCRIPT FLUSH on every master while a worker runs (a node restarted or replaced): the fetch, the
    requeue and the chord join get NOSCRIPT on their node and are loaded again there (EVAL in the
    worker's pipe, SCRIPT LOAD on a client), and the work carries on."""
    procs, proc = _worker(tmp_path, cluster, app, "-Q", ",".join(QUEUES))
    try:
        add, tsum = app.tasks["testapp.add"], app.tasks["testapp.tsum"]
        assert add.apply_async((1, 1), queue="low").get(timeout=20) == 2
        for server in cluster.masters:
            server.client().script_flush()
        ch = chord([add.s(i, i).set(queue=QUEUES[i % 3]) for i in range(6)], tsum.s().set(queue="default"))
        assert ch.apply_async().get(timeout=30) == sum(2 * i for i in range(6))
        assert [add.apply_async((i, 0), queue=QUEUES[i % 3]).get(timeout=20) for i in range(6)] == list(range(6))
        assert "Traceback" not in proc.log(), proc.log()
    except BaseException:
        print(proc.log()[-4000:])
        raise
    finally:
        procs.close()


def test_dead_letters_from_a_worker_on_a_cluster(tmp_path, cluster, app):
    """A failed acks-late task (task_acks_on_failure_or_timeout off) is dead-lettered by the worker: the
    dead letter (its own slot) is written, then the message acked on its queue's node, FAILURE stored."""
    settings = {"task_acks_late": True, "task_acks_on_failure_or_timeout": False}
    procs, proc = _worker(tmp_path, cluster, app, "-Q", ",".join(QUEUES), settings=settings)
    try:
        result = app.tasks["testapp.fail"].apply_async(("boom",), queue="low")
        with pytest.raises(Exception, match="boom"):
            result.get(timeout=20)
        wait_for(lambda: app.broker.dead_letters(), 10, "the dead letter")
        (_, fields), = app.broker.dead_letters()
        assert fields["queue"] == "low" and fields["task_id"] == result.id
        wait_for(lambda: app.broker.held(["low"]) == {"low": 0}, 10, "the message acked")
        assert app.broker.length("low", 0) == 0
    except BaseException:
        print(proc.log()[-4000:])
        raise
    finally:
        procs.close()


def test_wait_for_replicas_on_a_cluster(tmp_path, monkeypatch):
    """wait_for_replicas on a cluster: each node's sends are followed by a WAIT on the same connection
    (recorded on every master), and the tasks run."""
    c = Cluster(tmp_path / "c", masters=3, replicas=1).start()
    options = {"wait_for_replicas": 1}
    monkeypatch.setenv("TESTAPP_SETTINGS", json.dumps({"broker_transport_options": options}))
    testapp = import_testapp(monkeypatch, c.url())
    recorders = [Recorder(server.port) for server in c.masters]
    try:
        app = testapp.app
        procs, proc = _worker(tmp_path, c, app, "-Q", ",".join(QUEUES),
                              settings={"broker_transport_options": options})
        try:
            add = app.tasks["testapp.add"]
            one = add.apply_async((1, 2), queue="low")
            later = add.apply_async((2, 2), queue="default", countdown=0.2)
            bulk = app.send_many("testapp.add", [((i, 0), {}) for i in range(30)], queue="priority_high")
            assert one.get(timeout=20) == 3 and later.get(timeout=20) == 4
            assert [r.get(timeout=20) for r in bulk] == list(range(30))
        finally:
            procs.close()
        commands = [command for r in recorders for command in r.stop()]
        recorders = []
        waits = [args for _, args in commands if args and args[0].upper() == b"WAIT"]
        assert len(waits) >= 3  # one per send, per node the bulk send touched
    finally:
        for r in recorders:
            r.stop()
        drop_testapp(testapp)
        c.stop()


def test_the_asyncio_client_says_it_does_not_reach_a_cluster(cluster, app):
    import asyncio

    from minique.exceptions import ConfigurationError
    with pytest.raises(ConfigurationError, match="does not reach a Redis Cluster"):
        asyncio.run(app.tasks["testapp.add"].adelay(1, 2))
