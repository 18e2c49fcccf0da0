"""One contract, two brokers: every test runs against the Streams and the Lists broker."""
import threading
import time

import pytest
import redis
import redis.cluster

from minique import keys, message
from minique.brokers import ListsBroker, StreamsBroker
from minique.pipe import ClientPipe


@pytest.fixture(params=["streams", "lists", "streams-cluster", "lists-cluster"])
def broker(request, redis_server):  # (redis_server: the integration tier; a cluster is started when needed)
    if request.param.endswith("-cluster"):  # the same contract on a 3-master Redis Cluster
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flushall()
        client = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.masters[0].port)
    else:
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    cls = StreamsBroker if request.param.startswith("streams") else ListsBroker
    b = cls(client, visibility_timeout=0.5, max_deliveries=2)
    b.ensure_queues(["q", "r"])
    yield b
    client.close()


def send(broker, data, queue="q", priority=0):
    broker.send(broker.client, queue, priority, data)


def test_send_fetch_ack(broker):
    send(broker, b"m1")
    [d] = broker.fetch("c1", ["q"], 10, 0)
    assert (d.data, d.queue, d.priority, d.deliveries) == (b"m1", "q", 0, 0)
    assert broker.held(["q"]) == {"q": 1}
    pipe = ClientPipe(broker.client)
    broker.ack(pipe, d)
    pipe.execute()
    assert broker.held(["q"]) == {"q": 0}
    assert broker.fetch("c1", ["q"], 10, 0) == []


def test_fifo_within_a_priority_and_count_is_respected(broker):
    for i in range(5):
        send(broker, b"m%d" % i)
    first = broker.fetch("c1", ["q"], 3, 0)
    rest = broker.fetch("c1", ["q"], 10, 0)
    assert [d.data for d in first] == [b"m0", b"m1", b"m2"]
    assert [d.data for d in rest] == [b"m3", b"m4"]


def test_higher_priority_first(broker):
    send(broker, b"low", priority=0)
    send(broker, b"high", priority=9)
    send(broker, b"mid", priority=5)
    got = [d.data for d in broker.fetch("c1", ["q"], 1, 0)]
    got += [d.data for d in broker.fetch("c1", ["q"], 1, 0)]
    got += [d.data for d in broker.fetch("c1", ["q"], 1, 0)]
    assert got == [b"high", b"mid", b"low"]


def test_several_queues(broker):
    send(broker, b"a", queue="q")
    send(broker, b"b", queue="r")
    got = broker.fetch("c1", ["q", "r"], 10, 0)
    assert sorted((d.queue, d.data) for d in got) == [("q", b"a"), ("r", b"b")]


def test_length_and_purge(broker):
    for i in range(4):
        send(broker, b"x%d" % i)
    broker.send_later(broker.client, "q", 0, b"later", time.time() + 60)
    assert broker.length("q", 0) == 4
    broker.fetch("c1", ["q"], 1, 0)
    assert broker.length("q", 0) == 3
    assert broker.purge("q") == 4  # 3 waiting + 1 delayed; the held one stays with its consumer
    assert broker.length("q", 0) == 0 and broker.delayed_count("q") == 0


def test_waiting_counts_ready_messages_of_every_priority_and_queue(broker):
    """What the autoscaler reads: ready messages no consumer took (not held, not delayed, not other queues)."""
    assert broker.waiting(["q", "r", "never-used"]) == 0
    for priority in (0, 0, 5, 9):
        send(broker, b"m", priority=priority)
    send(broker, b"other", queue="r")
    send(broker, b"elsewhere", queue="s")
    broker.send_later(broker.client, "q", 0, b"later", time.time() + 60)
    assert broker.waiting(["q", "r"]) == 5
    broker.fetch("c1", ["q"], 2, 0)
    assert broker.waiting(["q"]) == 2 and broker.waiting(["r"]) == 1


def test_release_returns_unstarted_messages_uncounted(broker):
    send(broker, b"a")
    send(broker, b"b")
    assert len(broker.fetch("c1", ["q"], 10, 0)) == 2
    assert broker.release("c1", ["q"]) == 2
    got = broker.fetch("c2", ["q"], 10, 0)
    assert sorted(d.data for d in got) == [b"a", b"b"]
    assert all(d.deliveries == 0 for d in got)


def test_requeue_counts_a_delivery_then_dead_letters(broker):
    send(broker, b"poison")
    for expected in (0, 1, 2):
        [d] = broker.fetch("c1", ["q"], 1, 0)
        assert d.deliveries == expected
        broker.requeue(d, redelivered=True)
    assert broker.fetch("c1", ["q"], 1, 0) == []
    dead = broker.dead_letters()
    assert [f["m"] for _, f in dead] == [b"poison"]
    assert dead[0][1]["reason"] == "too many deliveries"


def test_held_by(broker):
    send(broker, b"a")
    [d] = broker.fetch("c1", ["q"], 1, 0)
    assert [h.data for h in broker.held_by("c1", ["q"])] == [b"a"]
    assert broker.held_by("c2", ["q"]) == []


def test_dead_consumer_messages_are_reclaimed_after_visibility_timeout(broker):
    send(broker, b"orphan")
    fetched_at = time.monotonic()
    broker.fetch("dead", ["q"], 1, 0)
    # Reclaim until it takes the message: never before the visibility timeout (0.5 s) has passed
    # since the fetch (a lower bound, which a slow machine cannot break), and soon after it.
    deadline = fetched_at + 10.0
    while broker.reclaim(["q"]) == 0:
        assert time.monotonic() < deadline, "the orphan was never reclaimed"
        time.sleep(0.02)
    assert time.monotonic() - fetched_at >= 0.5 - 0.01  # 10 ms: Redis's millisecond clock against ours
    [d] = broker.fetch("c2", ["q"], 1, 0)
    assert (d.data, d.deliveries) == (b"orphan", 1)


def test_extend_keeps_a_live_consumers_messages(broker):
    # Renewed every 0.4 s, held 1.6 s in all: longer than the visibility timeout, never reclaimed.
    # The timeout is 1 s here (the fixture's 0.5 s would fail the test if this process stalled for
    # half a second between extend() and reclaim(), as a loaded machine can make it).
    broker.visibility_timeout = 1.0
    send(broker, b"long")
    broker.fetch("alive", ["q"], 1, 0)
    for _ in range(4):
        time.sleep(0.4)
        broker.extend("alive", ["q"])
        assert broker.reclaim(["q"]) == 0
    assert [d.data for d in broker.held_by("alive", ["q"])] == [b"long"]


def test_delayed_messages_move_once_when_due(broker):
    # due in 1 s: the not-yet checks below fail only if this process stalls that long between them
    broker.send_later(broker.client, "q", 3, b"soon", time.time() + 1.0)
    moved, nxt = broker.move_due(["q"])
    assert moved == 0 and nxt is not None and nxt > time.time()
    assert broker.fetch("c1", ["q"], 1, 0) == []
    time.sleep(max(0.0, nxt - time.time()) + 0.01)
    results = []
    threads = [threading.Thread(target=lambda: results.append(broker.move_due(["q"])[0])) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sum(results) == 1
    [d] = broker.fetch("c1", ["q"], 10, 0)
    assert (d.data, d.priority) == (b"soon", 3)


def test_delayed_messages_are_found_by_their_own_id_and_brought_forward(broker):
    """find_delayed pages through the set (ZSCAN) and keeps only messages whose own id matches: an id
    also inside another message (its root, a chain's next step) or a malformed member is not a match.
    bring_forward makes them due soon, never later, and never puts back one that left the set."""
    far = time.time() + 3600
    target = message.make("t", (), None, task_id="id-target")
    child = message.make("t", (), None, task_id="id-child", root_id="id-target", parent_id="id-target")
    other = message.make("t", (), None, task_id="id-other")
    broker.send_later(broker.client, "q", 4, target.encode(), far)
    broker.send_later(broker.client, "q", 0, child.encode(), far)
    broker.send_later(broker.client, "r", 0, other.encode(), far)
    for i in range(300):  # more than one page of the scan
        broker.send_later(broker.client, "q", 0, message.make("t", (i,), None).encode(), far)
    broker.client.zadd(keys.delayed("q"), {b"x-no-digit id-target": far * 1000})
    [found] = broker.find_delayed("q", ["id-target", "id-missing"])
    assert (found.task_id, found.data, found.member[:1]) == ("id-target", target.encode(), b"4")
    assert abs(found.due - far) < 0.002
    assert broker.find_delayed("q", ["id-other"]) == [] and broker.find_delayed("q", []) == []
    assert [w.task_id for w in broker.find_delayed("r", ["id-other", "id-target"])] == ["id-other"]
    assert len(broker.find_delayed("q", [f"{m.id}" for m in (target, child)])) == 2

    before = time.time()
    assert broker.bring_forward("q", [found], 0.5) == 1
    score = broker.client.zscore(keys.delayed("q"), found.member) / 1000
    assert before + 0.4 < score < time.time() + 0.6  # (the server's clock: the same host here)
    assert broker.bring_forward("q", [found], 30) == 0  # never later than it is
    assert broker.client.zscore(keys.delayed("q"), found.member) / 1000 == score
    assert broker.client.zscore(keys.delayed("q"), broker.find_delayed("q", ["id-child"])[0].member) == \
        pytest.approx(far * 1000, abs=1)
    broker.client.zrem(keys.delayed("q"), found.member)  # moved meanwhile (when due): not put back
    assert broker.bring_forward("q", [found], 0) == 0 and broker.find_delayed("q", ["id-target"]) == []


def test_blocking_fetch_returns_when_a_message_arrives(broker):
    timer = threading.Timer(0.2, lambda: send(broker, b"wake"))
    timer.start()
    started = time.monotonic()
    got = broker.fetch("c1", ["q"], 1, 5.0)
    timer.join(5)  # its XADD's reply is read after the fetch may return: done before the fixture closes the pool
    assert [d.data for d in got] == [b"wake"]
    # the message ends the wait, not the block time: a fetch that waited its block time out would
    # take 5 s; the bound is half of that, generous for a loaded machine and clear of the 5 s
    assert time.monotonic() - started < 2.5


def test_dead_letter_replay(broker):
    broker.dead_letter(broker.client, b"msg", "because", "q", "tid")
    [(entry_id, fields)] = broker.dead_letters()
    assert fields["reason"] == "because" and fields["task_id"] == "tid"
    assert broker.replay_dead_letter(entry_id)
    assert broker.dead_letters() == []
    assert [d.data for d in broker.fetch("c1", ["q"], 1, 0)] == [b"msg"]


@pytest.mark.fault  # drops a connection
def test_send_now_from_threads_a_fork_and_after_a_dropped_connection(broker):
    import os
    broker.ensure_queues(["q"])

    def burst(prefix):
        for i in range(200):
            broker.send_now("q", 0, b"%s-%d" % (prefix, i))

    threads = [threading.Thread(target=burst, args=(b"t%d" % n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    broker.client.client_kill_filter(_type="normal", skipme=True)  # drops any connection it keeps
    broker.send_now("q", 0, b"after-kill")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            broker.send_now("q", 0, b"from-child")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    got = {d.data for d in broker.fetch("c1", ["q"], 1000, 0)}
    assert len(got) == 802 and {b"after-kill", b"from-child", b"t3-199"} <= got


def test_send_many_in_one_round_trip(broker):
    broker.send_many([("q", 0, b"a", None), ("q", 9, b"b", None), ("r", 0, b"c", None), ("q", 0, b"a2", None)])
    got = broker.fetch("c1", ["q", "r"], 10, 0)
    assert sorted((d.queue, d.priority, d.data) for d in got) == [("q", 0, b"a"), ("q", 0, b"a2"), ("q", 9, b"b"),
                                                                  ("r", 0, b"c")]
    assert [d.data for d in got if d.queue == "q" and d.priority == 0] == [b"a", b"a2"]  # in the order sent
    broker.send_many([("q", 0, b"now", None), ("q", 0, b"later", time.time() + 60)])
    assert [d.data for d in broker.fetch("c1", ["q"], 10, 0)] == [b"now"]
    assert broker.delayed_count("q") == 1


def test_oldest_waiting_is_the_first_message_not_yet_delivered(broker):
    import time
    before = time.time()
    assert broker.oldest_waiting(["q"]) == {}
    send(broker, b"first")
    send(broker, b"second", priority=5)
    if broker.kind == "lists":  # lists keep no time: the broker says nothing rather than guess
        assert broker.oldest_waiting(["q"]) == {}
        return
    oldest = broker.oldest_waiting(["q"])["q"]
    assert before - 0.002 <= oldest <= time.time()
    broker.ensure_queues(["q"])
    taken = broker.fetch("c1", ["q"], 1, 0)  # priority 5 first; "first" still waits
    assert [d.data for d in taken] == [b"second"]
    assert broker.oldest_waiting(["q"])["q"] == oldest
    broker.fetch("c1", ["q"], 1, 0)
    assert broker.oldest_waiting(["q"]) == {}
