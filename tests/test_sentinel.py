"""Redis Sentinel: clients and a real CLI worker through a 1-master + 1-replica + 3-sentinel group,
across a planned failover (SENTINEL FAILOVER, the old master demoted while alive) and a crash of
the master (kill -9)."""
from __future__ import annotations

import json
import os
import threading
import uuid

import pytest

from procs import Processes, Sending, drop_testapp, import_testapp, wait_for
from redis_multi import MASTER_NAME, SentinelGroup, server_supports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_why = server_supports("sentinel")
if _why:
    pytest.skip(_why, allow_module_level=True)


@pytest.fixture
def group(tmp_path):
    """1 master + 2 replicas + 3 sentinels (down-after-milliseconds 1 s)."""
    g = SentinelGroup(tmp_path / "sentinel", replicas=2).start()
    yield g
    g.stop()


@pytest.fixture
def strict_group(tmp_path):
    """The group with min-replicas-to-write 1 (max lag 1 s) on every server: a master that lost its
    replica refuses writes (NOREPLICAS) instead of taking writes a failover would discard."""
    g = SentinelGroup(tmp_path / "sentinel", server_args=("--min-replicas-to-write", "1",
                                                          "--min-replicas-max-lag", "1")).start()
    yield g
    g.stop()


@pytest.fixture
def app(group, monkeypatch):
    monkeypatch.setenv("TESTAPP_SETTINGS", json.dumps({"broker_transport_options": group.transport_options}))
    testapp = import_testapp(monkeypatch, group.url())
    yield testapp.app
    drop_testapp(testapp)


def _worker(tmp_path, group, app, *args):
    procs = Processes(tmp_path, group.url())
    settings = json.dumps({"broker_transport_options": group.transport_options})
    proc = procs.worker("-c", "2", *args, settings=settings, wait=False)

    def ready():
        if proc.popen.poll() is not None:
            raise AssertionError(f"worker exited with {proc.popen.returncode}:\n{proc.log()}")
        return app.broker_client.hexists("minique:workers", proc.hostname)
    wait_for(ready, 20, "the worker's first heartbeat")
    return procs, proc


def test_the_url_reaches_the_master_through_the_sentinels(group, app):
    client = app.broker_client
    client.set("minique:probe", b"1")
    master = group.server(group.master_port()).client()
    assert master.get("minique:probe") == b"1"
    for replica in group.servers[1:]:
        assert replica.client().info("replication")["role"] == "slave"


def test_a_read_cut_off_mid_reply_drops_its_connection(app):
    """The worker's SIGUSR2 ends a blocking read by raising in its handler: the connection is dropped
    (redis-py's Sentinel connection keeps it by default, and the next command would read the reply owed)."""
    import signal

    class Cut(BaseException):
        pass

    def cut(signum, frame):
        raise Cut()

    client = app.broker_client
    client.ping()
    before = signal.signal(signal.SIGALRM, cut)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Cut):
            client.blpop("minique:test:nothing", 2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
    assert client.rpush("minique:test:list", b"x") == 1
    assert client.lpop("minique:test:list") == b"x"


def test_worker_keeps_going_across_a_planned_failover(tmp_path, group, app):
    procs, proc = _worker(tmp_path, group, app)
    try:
        add = app.tasks["testapp.add"]
        before = [add.delay(i, i) for i in range(20)]
        assert [r.get(timeout=20) for r in before] == [2 * i for i in range(20)]
        old = group.master_port()
        new = group.failover()
        assert new != old
        after = [add.delay(i, 1) for i in range(20)]  # the client follows the switch too
        assert [r.get(timeout=30) for r in after] == [i + 1 for i in range(20)]
        # the worker's own connections moved: its heartbeat is written on the new master
        fresh = group.server(new).client()
        wait_for(lambda: fresh.hexists("minique:workers", proc.hostname), 20, "a heartbeat on the new master")
        # the control channel too: the worker hears a broadcast published on the new master
        wait_for(lambda: any(proc.hostname in r for r in app.control.ping(timeout=0.5)), 30, "a ping reply")
        assert proc.popen.poll() is None
    finally:
        procs.close()


def test_worker_and_get_survive_the_master_being_killed(tmp_path, group, app):
    """kill -9 of the master: held and blocked connections fail, re-resolve through the sentinels
    (down-after-milliseconds 1 s here) and carry on; a get() waiting meanwhile returns its result."""
    procs, proc = _worker(tmp_path, group, app)
    try:
        add = app.tasks["testapp.add"]
        first = [add.delay(i, i) for i in range(10)]
        assert [r.get(timeout=20) for r in first] == [2 * i for i in range(10)]
        old = group.master_port()
        group.server(old).kill()
        group.wait_switched(old, timeout=30)
        after = [add.delay(i, 2) for i in range(20)]
        try:
            assert [r.get(timeout=40) for r in after] == [i + 2 for i in range(20)]
        except Exception:
            print(proc.log())
            raise
        assert proc.popen.poll() is None, proc.log()
    finally:
        procs.close()


def test_tasks_sent_while_the_master_is_killed_all_complete(tmp_path, group, monkeypatch):
    """kill -9 of the master while 1,000 acks-late tasks are sent and run, the client with
    wait_for_replicas 1 (of 2 replicas, so that one is left to confirm after the promotion): every send
    is on a replica before it returns (WAIT) or is sent again to the new master, no error reaches the
    caller, and every task ends SUCCESS, the last one within the sentinels' switch
    (down-after-milliseconds 1 s) plus a few seconds. (Without wait_for_replicas, a
    send the dead master acknowledged and had not passed on would be lost: docs/scaling.md.)"""
    import time

    options = {**group.transport_options, "wait_for_replicas": 1}
    settings = {"broker_transport_options": options, "task_acks_late": True}
    monkeypatch.setenv("TESTAPP_SETTINGS", json.dumps(settings))
    testapp = import_testapp(monkeypatch, group.url())
    procs = Processes(tmp_path, group.url())
    proc = procs.worker("-c", "2", settings=json.dumps(settings), wait=False)
    try:
        app = testapp.app
        wait_for(lambda: app.broker_client.hexists("minique:workers", proc.hostname), 20, "the worker")
        add = app.tasks["testapp.add"]
        sending = Sending(1000, lambda i: add.delay(i, 0), 300)
        with sending.during(proc):
            old = group.master_port()
            group.server(old).kill()
            killed = time.monotonic()
            group.wait_switched(old, timeout=30)
            switched = time.monotonic() - killed
            sending.all_returned_their_index(60)
            done = time.monotonic() - killed
            print(f"switch seen {switched:.1f}s after the kill; {len(sending.sent)} tasks SUCCESS {done:.1f}s after it")
            assert done < switched + 15
    finally:
        procs.close()
        drop_testapp(testapp)


def test_no_send_is_lost_across_a_planned_failover(tmp_path, strict_group, monkeypatch):
    """Tasks are sent without pause while SENTINEL FAILOVER moves the master, with min-replicas-to-write 1
    on the servers and wait_for_replicas 1 on the client: a send returns once the replica has it (WAIT),
    the old master refuses what it could not pass on (NOREPLICAS, then READONLY), the client and the
    worker send it again to the new master, and every task ends SUCCESS, none lost, none refused."""

    group = strict_group
    options = {**group.transport_options, "wait_for_replicas": 1}
    monkeypatch.setenv("TESTAPP_SETTINGS", json.dumps({"broker_transport_options": options}))
    testapp = import_testapp(monkeypatch, group.url())
    try:
        app = testapp.app
        procs = Processes(tmp_path, group.url())
        proc = procs.worker("-c", "2", settings=json.dumps({"broker_transport_options": options}), wait=False)
        wait_for(lambda: app.broker_client.hexists("minique:workers", proc.hostname), 20, "the worker")
        add = app.tasks["testapp.add"]
        sending = Sending(400, lambda i: add.delay(i, 0), 100)
        try:
            with sending.during(proc):
                group.failover()
                sending.all_returned_their_index(60)
        finally:
            procs.close()
    finally:
        drop_testapp(testapp)


def _connections_to(pids, port: int) -> int:
    """How many TCP connections the processes `pids` hold open to loopback port `port` (read in /proc)."""
    import os
    from pathlib import Path
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:  # (a process that just ended holds nothing)
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state, inode = fields[2], fields[3], fields[9]
        if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port and inode in inodes:  # ESTABLISHED
            count += 1
    return count


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads the worker's connections in /proc (Linux)")
@pytest.mark.parametrize("pool", ["prefork", "threads", "asyncio"])
def test_the_worker_follows_a_planned_failover_within_a_heartbeat(tmp_path, monkeypatch, pool):
    """SENTINEL FAILOVER while tasks flow, the old master alive: it stays a master for seconds (until the
    sentinels demote it, ~10 s here), refusing writes (min-replicas-to-write 1: its replica is the one
    promoted). The worker does not wait for that demotion: its parent asks the sentinels on each heartbeat
    (0.5 s here), and every connection of the worker leaves the old master at once: within a few seconds
    of the switch, while the old master is still a master, the worker (parent and pool processes) holds
    no connection to it, answers a ping published on the new master, and runs tasks sent after the
    switch. No send is lost: every task ends SUCCESS, those sent across the switch too (confirmed by the
    replica: WAIT), and a client's get() blocked on the old master meanwhile returns when the sentinels
    demote it and close its clients (the client's side, the same whatever the pool, looked at once).

    Only the old master has min-replicas-to-write: with it on every server the promoted replica would
    take no write until the old master has joined it as a replica, ~10 s later, and nothing could show
    the worker following sooner; and the tasks sent after the switch go through a client without
    wait_for_replicas, for the same reason (the sends across it wait for that join). The worker, for the
    same reason again, runs without wait_for_replicas: with it, its own writes wait for a replica's WAIT
    too (pipe.py), and the new master has none until that join. Its tasks are acks-late, so a result the
    switch loses goes with its ack and the task runs again. Without the heartbeat's look, the worker left
    the old master only at its demotion, ~10 s after the switch."""
    import time

    from minique import Minique

    group = SentinelGroup(tmp_path / "sentinel", replicas=1,
                          master_args=("--min-replicas-to-write", "1", "--min-replicas-max-lag", "1")).start()
    options = {**group.transport_options, "wait_for_replicas": 1}
    settings = {"broker_transport_options": options, "worker_heartbeat_interval": 0.5, "task_acks_late": True}
    monkeypatch.setenv("TESTAPP_SETTINGS", json.dumps(settings))
    testapp = import_testapp(monkeypatch, group.url())
    probe = Minique("probe", broker=group.url(), broker_transport_options=group.transport_options)
    procs = Processes(tmp_path, group.url())
    try:
        app = testapp.app
        worker_settings = {**settings, "broker_transport_options": group.transport_options}
        proc = procs.worker("-c", "2", "-P", pool, settings=json.dumps(worker_settings), wait=False)
        wait_for(lambda: app.broker_client.hexists("minique:workers", proc.hostname), 20, "the worker")
        add = app.tasks["testapp.add"]
        assert probe.send_task("testapp.add", (1, 1)).get(timeout=20) == 2
        old = group.master_port()
        worker_pids = lambda: [proc.pid, *proc.children()]  # noqa: E731
        assert _connections_to(worker_pids(), old) > 0
        old_master = group.server(old).client()
        client_side = pool == "prefork"  # (sends and a get() across the switch: looked at once)
        waited: dict = {}
        waiting = app.AsyncResult(str(uuid.uuid4()))  # a get() blocked on the old master across the switch
        if client_side:
            def wait_across():
                try:
                    waited["value"], waited["at"] = waiting.get(timeout=40), time.monotonic()
                except Exception as exc:  # noqa: BLE001 - the test says what it got
                    waited["value"] = exc
            waiter = threading.Thread(target=wait_across, daemon=True)
            waiter.start()
            wait_for(lambda: b"cmd=brpoplpush" in old_master.execute_command("CLIENT", "LIST"), 10,
                     "the get() to block")
        sending = Sending(1000 if client_side else 300, lambda i: add.delay(i, 0), 100)
        with sending.during(proc):
            new = group.failover()
            sentinels = app.broker_client.connection_pool.sentinel_manager  # (asked as every client asks them)
            wait_for(lambda: sentinels.discover_master(MASTER_NAME)[1] == new, 10, "the sentinels' switch-master")
            switched, sent = time.monotonic(), len(sending.sent)
            wait_for(lambda: _connections_to(worker_pids(), old) == 0, 10, "the worker to leave the old master")
            left = time.monotonic() - switched
            wait_for(lambda: any(proc.hostname in r for r in app.control.ping(timeout=0.25)), 10, "a ping reply")
            answered = time.monotonic() - switched
            after = [probe.send_task("testapp.add", (i, 0)) for i in range(20)]  # (refused: the client follows)
            assert [r.get(timeout=30) for r in after] == list(range(20))
            ran = time.monotonic() - switched
            still_master = old_master.info("replication")["role"] == "master"
            print(f"{pool}: after the switch was announced, the worker left the old master in {left:.1f}s, answered "
                  f"a ping in {answered:.1f}s, ran 20 tasks sent then in {ran:.1f}s (the old master still a master: "
                  f"{still_master})")
            assert still_master, "the old master was demoted before the worker was seen to follow"
            assert left < 3.0 and answered < 4.0
            sending.all_returned_their_index(60)
            if client_side:
                assert sent < len(sending.sent), "every send was made before the switch"
                add.apply_async((7, 0), task_id=waiting.id)
                waiter.join(45)
                assert waited.get("value") == 7
                print(f"the get() blocked on the old master returned {waited['at'] - switched:.1f}s after the switch")
    finally:
        procs.close()
        probe.close()
        drop_testapp(testapp)
        group.stop()


def test_a_cli_command_says_plainly_when_no_sentinel_answers(tmp_path, group):
    import subprocess
    import sys
    import time

    from procs import APPS
    url = group.url()
    group.stop()
    env = Processes(tmp_path, url).env(json.dumps({"broker_transport_options": group.transport_options}))
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "minique.cli", "-A", "testapp", "status"], env=env, cwd=APPS,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "no sentinel answered with a master for 'mymaster' (asked 127.0.0.1:" in out.stderr + out.stdout
    assert "<redis." not in out.stderr + out.stdout  # (not redis-py's reprs of every client)
    assert time.monotonic() - started < 15  # broker_connection_timeout (4 s) and start-up, not retries


def test_beat_fires_each_slot_once_across_a_failover(group):
    """Two beats (threads) tick every 0.2 s while SENTINEL FAILOVER moves the master: a slot's claim is
    written before its message and replication keeps that order, so no slot is sent twice, and the
    leader carries on on the new master."""
    import threading

    from minique import Minique, keys, message as message_mod
    from minique.beat import Beat

    def make():
        app = Minique("t", broker=group.url(), broker_transport_options=group.transport_options,
                      beat_schedule={"tick": {"task": "t.tick", "schedule": 0.2}}, beat_lease_seconds=3)
        return Beat(app)

    beats = [make(), make()]
    threads = [threading.Thread(target=b.run, daemon=True) for b in beats]
    for t in threads:
        t.start()
    client = make().client

    def slots():
        entries = client.xrange(keys.queue("default", 0))
        return [message_mod.decode(fields[b"m"]).headers["beat_key"] for _, fields in entries]
    try:
        wait_for(lambda: len(slots()) >= 5, 20, "beat's first runs")
        group.failover()
        fired = len(slots())
        wait_for(lambda: len(slots()) >= fired + 10, 30, "runs after the failover")
    finally:
        for b in beats:
            b.stop()
        for t in threads:
            t.join(10)
    seen = slots()
    assert len(seen) == len(set(seen)), [s for s in seen if seen.count(s) > 1][:5]


def test_the_asyncio_client_follows_a_planned_failover(tmp_path, group, app):
    import asyncio
    procs, proc = _worker(tmp_path, group, app)
    try:
        add = app.tasks["testapp.add"]

        async def round_trips(base):
            results = await asyncio.gather(*(add.adelay(base, i) for i in range(10)))
            return await asyncio.gather(*(r.aget(timeout=30) for r in results))

        async def main():
            assert await round_trips(0) == list(range(10))
            old = group.master_port()
            assert await asyncio.to_thread(group.failover) != old
            assert await round_trips(100) == [100 + i for i in range(10)]  # the same loop's clients followed
            await app.aclose()
        asyncio.run(main())
    finally:
        procs.close()
