"""Fault injection against real `minique worker` processes and a real Redis: check the books.

Every test sends a known set of tasks whose bodies record their execution in Redis
(testapp.book: "<key>:started" when a body starts, "<key>" when it ends), injects a fault,
and checks that every task was done exactly once, or, where acks_late redelivery allows it,
at least once with every duplicate accounted for. Nothing may be lost, except where
at-most-once delivery (acks_late off) says so: then only the tasks whose bodies were running
at the instant of the crash, and each of them is named.

Each test prints its figures (`RELIABILITY {...}`); with MINIQUE_RELIABILITY_REPORT=<file>
they are also appended to that file (docs/reliability.md quotes a run).
"""
import json
import os
import signal
import statistics
import threading
import time

import pytest
import redis

from minique import states
from minique.exceptions import WorkerLostError
from procs import Books, Fault, Processes, gone, report, send_books, wait_for

VIS = 2  # seconds: visibility timeout of the tests that wait for it


def conf(acks_late=False, reject=None, vis=VIS, **more):
    settings = {"broker_transport_options": {"visibility_timeout": vis}, "task_acks_late": acks_late}
    if reject is not None:
        settings["task_reject_on_worker_lost"] = reject
    settings.update(more)
    return json.dumps(settings)


def settled(app, queues=("default",)):
    """Nothing waiting, delayed or held in the queues."""
    b = app.broker
    waiting = sum(b.length(q, p) for q in queues for p in range(10))
    return waiting == 0 and sum(b.held(list(queues)).values()) == 0 and all(b.delayed_count(q) == 0 for q in queues)


def started_by(books, pids):
    return {t for t, pid, _ in books.starts() if pid in pids}


# --- 1. kill -9 a pool child in the middle of a task ------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("acks_late,reject", [(False, None), (True, False), (True, True)],
                         ids=["early-ack", "acks-late", "acks-late+reject-on-worker-lost"])
def test_kill_child_mid_task(procs, client_app, redis_client, acks_late, reject):
    worker = procs.worker("-c", "2", settings=conf(acks_late, reject))
    app = client_app.app
    victim = client_app.gated.apply_async(("k1", "victim"), priority=9)
    tokens = send_books(app, "k1", 300, 0.005)
    pid = wait_for(lambda: next((p for t, p, _ in Books(redis_client, "k1", []).starts() if t == "victim"), None),
                   10, "the victim task to start")
    assert pid in worker.children()
    os.kill(pid, signal.SIGKILL)                        # the fault: its body is blocked, certainly mid-task
    books = Books(redis_client, "k1", tokens)
    if acks_late and reject:
        # (open the gate once the victim runs again: the tasks its process reserved wait behind it)
        wait_for(lambda: [t for t, _, _ in books.starts()].count("victim") == 2, 10, "the victim's redelivery")
        redis_client.rpush("k1:gate", "go")
        assert victim.get(timeout=10) == "victim"
        deliveries = [d for t, _, d in books.starts() if t == "victim"]
        assert deliveries == [0, 1]
    else:
        with pytest.raises(WorkerLostError):
            victim.get(timeout=10)
    wait_for(books.all_done, 30, "the other tasks")
    wait_for(lambda: settled(app), 10, "the queue to drain")
    if reject:                                          # the victim is in the books: it must be done too
        books = Books(redis_client, "k1", tokens + ["victim"])
    figures = books.figures()
    assert figures["done"] == figures["sent"] == len(books.tokens) and figures["lost"] == 0
    assert figures["duplicated"] == 0 and figures["unknown"] == 0
    assert figures["started_twice"] == (1 if reject else 0)              # the victim, redelivered
    # the killed child's prefetched messages went back uncounted; nothing else was redelivered
    assert all(d == 0 for t, _, d in books.starts() if t != "victim")
    assert redis_client.xlen("minique:dlq") == 0
    wait_for(lambda: len(worker.children()) == 2, 10, "the pool to be whole again")
    report(f"kill -9 pool child mid-task ({'acks_late' if acks_late else 'early ack'}"
           f"{', reject_on_worker_lost' if reject else ''})", **figures,
           victim="redelivered, done once" if reject else "FAILURE WorkerLostError")


# --- 1b. a child lost while its early acks wait to share a write ----------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("window", [None, 0], ids=["default-window", "window-0"])
def test_child_lost_while_early_acks_wait_to_share_a_write(procs, client_app, redis_client, window):
    """Between short tasks of one prefetched batch, early acks wait for one shared write (Batch.defer).
    A child that dies then has not sent them: its parent acks what it had started, so nothing it
    started runs again, and what it had not started runs once elsewhere. With
    worker_early_ack_window = 0 every ack is written before its task: the parent has none to send."""
    app = client_app.app
    tokens = send_books(app, "k1b", 2, prefix="a")           # a0 (written before it runs), a1 (deferred)
    victim = client_app.die.apply_async(("k1b:died",))       # deferred too: dies before its ack is sent
    tokens += send_books(app, "k1b", 1, prefix="b")          # prefetched with them, not started
    more = {} if window is None else {"worker_early_ack_window": window}
    worker = procs.worker("-c", "1", settings=conf(**more))  # one batch of 4: a0, a1, die, b0
    with pytest.raises(WorkerLostError):
        victim.get(timeout=10)
    books = Books(redis_client, "k1b", tokens)
    wait_for(books.all_done, 20, "the other tasks")
    wait_for(lambda: settled(app), 10, "the queue to drain")
    parent_acked = "had started (their acks were waiting to share a write)" in worker.log()
    assert parent_acked == (window is None)                  # (with the default window: the fault bit)
    assert redis_client.llen("k1b:died") == 1                # the victim ran once: acked by the parent
    figures = books.figures()
    assert figures["done"] == figures["sent"] == 3 and figures["duplicated"] == 0
    assert figures["started_twice"] == 0
    assert redis_client.xlen("minique:dlq") == 0


@pytest.mark.timeout(60)
def test_a_deferred_early_ack_is_sent_while_its_long_task_runs(procs, client_app, redis_client):
    """A task whose early ack was deferred (a short task before it, more in hand) and that runs long:
    the ack leaves within a few milliseconds anyway (SIGALRM), not when the task ends."""
    app = client_app.app
    tokens = send_books(app, "k1c", 1, prefix="a")
    client_app.gated.apply_async(("k1c", "gated"))
    tokens += send_books(app, "k1c", 1, prefix="b")
    procs.worker("-c", "1", settings=conf())
    wait_for(lambda: "gated" in {t for t, _, _ in Books(redis_client, "k1c", []).starts()}, 10, "the gated task")
    # held: the gated task until its ack lands, and b0, prefetched
    wait_for(lambda: sum(app.broker.held(["default"]).values()) == 1, 2, "the running task's ack")
    redis_client.rpush("k1c:gate", "go")
    books = Books(redis_client, "k1c", tokens + ["gated"])
    wait_for(books.all_done, 10, "every task")
    assert books.figures()["duplicated"] == 0


# --- 2. kill -9 the whole worker under load; a second worker finishes --------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("broker", ["streams", "lists"])
@pytest.mark.parametrize("acks_late", [True, False], ids=["acks-late", "early-ack"])
def test_kill_whole_worker_under_load(procs, client_app, redis_client, acks_late, broker):
    settings = conf(acks_late, broker_transport_options={"visibility_timeout": VIS, "queue_type": broker})
    client_app.app.conf.broker_transport_options = {"visibility_timeout": VIS, "queue_type": broker}
    app = client_app.app
    first = procs.worker("-c", "2", settings=settings)
    tokens = send_books(app, "k2", 400, 0.01)
    books = Books(redis_client, "k2", tokens)
    wait_for(lambda: books.done_count() >= 60, 20, "some progress")
    pids = {first.pid, *first.children()}
    Fault.KILL_WORKER.inject(first)                         # parent and children, SIGKILL
    wait_for(lambda: all(gone(p) for p in pids), 10, "the killed processes to be gone")
    done_at_kill = books.done_count()
    running_at_kill = started_by(books, pids) - set(books.done())
    assert running_at_kill, "no task was mid-flight at the kill: the fault did not bite"
    procs.worker("-c", "2", settings=settings)
    if acks_late:
        wait_for(books.all_done, 30, "every task, redelivered ones included")
        lost = set()
    else:
        # at-most-once: a body that was running at the crash is not redone; everything else is
        wait_for(lambda: set(books.done()) >= set(tokens) - running_at_kill, 30, "every other task")
        lost = set(tokens) - set(books.done())
        assert lost <= running_at_kill and len(lost) <= 2     # at most one per pool process
    wait_for(lambda: settled(app), 15, "the queues to drain")
    figures = books.figures()
    redelivered = {t for t, _, d in books.starts() if d > 0}
    assert figures["unknown"] == 0 and set(tokens) - set(books.done()) == lost
    # a duplicate can only be a task whose body ended on the dead worker but whose ack did not
    dup = {t for t, n in books.done().items() if n > 1}
    assert dup <= started_by(books, pids)
    assert figures["duplicated"] <= 2
    if not acks_late:
        assert figures["duplicated"] == 0
    if acks_late:     # what was running at the kill ran again, as a counted redelivery
        assert running_at_kill <= redelivered
    assert redis_client.xlen("minique:dlq") == 0
    report(f"kill -9 whole worker under load, second worker finishes ({broker}, "
           f"{'acks_late' if acks_late else 'early ack'})", **figures, done_before_kill=done_at_kill,
           running_at_kill=len(running_at_kill), redelivered=len(redelivered),
           lost_tasks_were_running_at_kill=len(lost))


# --- 3. SIGTERM under load: warm shutdown -----------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("acks_late", [False, True], ids=["early-ack", "acks-late"])
def test_sigterm_under_load_is_warm(procs, client_app, redis_client, acks_late):
    app = client_app.app
    first = procs.worker("-c", "2", "--prefetch-multiplier", "8", settings=conf(acks_late))
    tokens = send_books(app, "k3", 400, 0.01)
    books = Books(redis_client, "k3", tokens)
    wait_for(lambda: books.done_count() >= 60, 20, "some progress")
    pids = {first.pid, *first.children()}
    Fault.SIGTERM.inject(first)
    assert first.wait(15) == 0                                          # clean exit
    started_on_first = started_by(books, pids)
    assert started_on_first <= set(books.done())                        # every running task finished
    done_by_first = books.done_count()
    assert done_by_first < len(tokens)
    assert "Warm shutdown" in first.log()
    procs.worker("-c", "2", settings=conf(acks_late))
    wait_for(books.all_done, 30, "the rest on a second worker")
    wait_for(lambda: settled(app), 10, "the queue to drain")
    figures = books.figures()
    assert figures["done"] == 400 and figures["lost"] == 0 and figures["duplicated"] == 0
    assert figures["started_twice"] == 0
    assert all(d == 0 for _, _, d in books.starts())                   # returned unstarted, uncounted
    report(f"SIGTERM under load: warm shutdown ({'acks_late' if acks_late else 'early ack'})", **figures,
           done_by_first_worker=done_by_first)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["SIGTERM twice", "SIGQUIT", "SIGTERM past worker_shutdown_timeout"])
@pytest.mark.parametrize("acks_late", [False, True], ids=["early-ack", "acks-late"])
def test_cold_shutdown(procs, client_app, redis_client, acks_late, how):
    app = client_app.app
    first = procs.worker("-c", "2", settings=conf(acks_late, worker_shutdown_timeout=1))
    gated = [client_app.gated.apply_async(("k3c", f"g{i}"), priority=9) for i in range(2)]
    tokens = send_books(app, "k3c", 100, 0.0)
    books = Books(redis_client, "k3c", tokens)
    wait_for(lambda: len(books.starts()) >= 2 and {"g0", "g1"} <= {t for t, _, _ in books.starts()}, 10,
             "both gated tasks to run")
    if how == "SIGQUIT":
        first.signal(signal.SIGQUIT)
    elif how == "SIGTERM twice":
        Fault.SIGTERM_TWICE.inject(first)
    else:                                   # warm, but the gated tasks outlive the 1 s grace
        Fault.SIGTERM.inject(first)
    assert first.wait(15) == 0
    if how.startswith("SIGTERM past"):
        assert "Warm shutdown" in first.log() and "Cold shutdown" not in first.log()
    procs.worker("-c", "2", settings=conf(acks_late))
    if acks_late:     # interrupted: redelivered, counted, done once
        # (one process may reserve both: open both gates once the first runs again)
        wait_for(lambda: len([t for t, _, _ in books.starts() if t.startswith("g")]) >= 3, 15, "a redelivery")
        redis_client.rpush("k3c:gate", "go", "go")
        assert sorted(g.get(timeout=10) for g in gated) == ["g0", "g1"]
        assert sorted(d for t, _, d in books.starts() if t.startswith("g")) == [0, 0, 1, 1]
    else:             # early ack: the interrupted tasks fail, never run again
        for g in gated:
            with pytest.raises(WorkerLostError):
                g.get(timeout=10)
    wait_for(books.all_done, 20, "the other tasks")
    wait_for(lambda: settled(app), 10, "the queue to drain")
    if acks_late:                                       # the interrupted tasks are in the books too
        books = Books(redis_client, "k3c", tokens + ["g0", "g1"])
    figures = books.figures()
    assert figures["done"] == figures["sent"] and figures["lost"] == 0 and figures["duplicated"] == 0
    assert figures["unknown"] == 0 and figures["started_twice"] == (2 if acks_late else 0)
    report(f"cold shutdown ({how}, {'acks_late' if acks_late else 'early ack'})", **figures,
           interrupted="2 redelivered, done once" if acks_late else "2 FAILURE WorkerLostError")


# --- 4. Redis killed and restarted under load --------------------------------------------------------

@pytest.mark.timeout(90)
@pytest.mark.parametrize("pool", ["prefork", "asyncio"])
@pytest.mark.parametrize("acks_late", [False, True], ids=["early-ack", "acks-late"])
def test_redis_killed_and_restarted_under_load(fresh_redis, fresh_app, tmp_path, acks_late, pool):
    """kill -9 of Redis (AOF, appendfsync always) while a client sends and two workers run; restart it.

    Nothing the client was told is sent may be lost; the workers and the client reconnect by themselves.
    """
    app = fresh_app.app
    procs = Processes(tmp_path, fresh_redis.url())
    check = fresh_redis.client()
    try:
        # a long visibility timeout: the outage must not look like dead workers (see docs/reliability.md)
        workers = [procs.worker("-c", "2", "-P", pool, settings=conf(acks_late, vis=60)) for _ in range(2)]
        sent, failed_sends, results, spans, stop = [], [], [], [], threading.Event()

        def client():
            i = 0
            while not stop.is_set() and i < 1500:
                batch = [f"t{j}" for j in range(i, i + 20)]
                began = time.time()
                try:
                    results.extend(app.send_many("testapp.book_durable", (((("k4", t, 0.002)), None) for t in batch)))
                    sent.extend(batch)                  # acknowledged by Redis
                except redis.exceptions.RedisError:
                    failed_sends.extend(batch)          # the client was told: not sent
                spans.append((began, time.time(), batch))
                i += 20
                time.sleep(0.01)                        # a steady producer, not a burst

        producer = threading.Thread(target=client)
        producer.start()
        wait_for(lambda: check.llen("k4") >= 200, 30, "load before the fault")
        killed_from = time.time()
        fresh_redis.kill()                              # the fault: SIGKILL, no shutdown
        killed_by = time.time()
        time.sleep(1.0)                                 # ... an outage of one second ...
        fresh_redis.start()
        check = fresh_redis.client()
        producer.join(60)
        assert not producer.is_alive()
        books = Books(check, "k4", sent)
        wait_for(books.all_done, 60, "every acknowledged task")
        wait_for(lambda: settled(app), 20, "the queue to drain")
        for w in workers:
            assert w.popen.poll() is None, w.log()      # the workers rode it out
            assert len(w.children()) == 2
        figures = books.figures()
        ran_unacked = len(set(books.done()) & set(failed_sends))
        assert figures["lost"] == 0 and figures["done"] == len(sent)
        assert figures["unknown"] == ran_unacked
        # A duplicate needs a request in flight at the instant of the kill whose effect was saved but
        # whose reply was lost, then retried by redis-py: the client's send of one batch (its XADDs run
        # twice, so the same task ids are queued twice). Workers retry their flushes too, but those
        # hold results and acks (idempotent), so they never make a task run again.
        in_flight = {t for began, ended, batch in spans if began <= killed_by and ended >= killed_from
                     for t in batch}
        duplicated = {t for t, n in books.done().items() if n > 1}
        assert duplicated <= in_flight, (sorted(duplicated - in_flight), len(in_flight))
        # results too: every acknowledged task has its SUCCESS
        assert [r.state for r in results].count(states.SUCCESS) == len(sent)
        assert fresh_app.add.delay(2, 2).get(timeout=20) == 4           # the client reconnected
        logs = "".join(w.log() for w in workers)
        report(f"Redis kill -9 + restart under load ({'acks_late' if acks_late else 'early ack'}, {pool})",
               **figures, sends_refused=len(failed_sends), refused_but_ran=ran_unacked,
               sends_in_flight_at_kill=len(in_flight),
               worker_reconnect_warnings=logs.count("Redis unreachable"))
    finally:
        procs.close()
        check.close()


# --- 4b. a fetch whose reply never arrived ----------------------------------------------------------

@pytest.mark.timeout(30)
def test_cold_shutdown_with_redis_gone_ends_the_worker(fresh_redis, tmp_path):
    """Redis stops, then SIGTERM twice: the worker parent ends (it used to wait on Redis forever, retrying
    the return of its pool processes' messages). What they held is left pending, to be redelivered after
    visibility_timeout like a dead worker's; the parent says so."""
    procs = Processes(tmp_path, fresh_redis.url())
    try:
        worker = procs.worker("-c", "2")
        fresh_redis.kill()
        worker.signal(signal.SIGTERM)
        wait_for(lambda: "Warm shutdown" in worker.log(), 10, "the warm shutdown")
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0  # bounded by one Redis call's client retries (~9 s), not by Redis
        log = worker.log()
        assert "Cold shutdown" in log and "stops without its worker-offline event" in log
    finally:
        procs.close()


def test_message_delivered_to_a_live_consumer_that_never_saw_it_is_given_back(procs, client_app, redis_client):
    """Redis recorded a delivery to a live consumer but the reply was lost (a connection cut, a client
    retrying the read): the parent keeps renewing the claim, so only the consumer itself can notice."""
    from minique import keys
    worker = procs.worker("-c", "1", settings=conf(False))
    stream = keys.queue("default", 0)
    assert client_app.book.delay("k4b", "first").get(timeout=10) == "first"   # the consumer now exists
    consumer = wait_for(lambda: next((c["name"].decode() for c in redis_client.xinfo_consumers(stream, keys.GROUP)
                                      if c["name"].decode().startswith(worker.hostname)), None), 10, "the consumer")
    msg = client_app.app.build_message("testapp.book", ("k4b", "orphan"), None, {})
    pipe = redis_client.pipeline(transaction=True)      # delivered before the blocked reader can see it
    pipe.xadd(stream, {"m": msg.encode()})
    pipe.xreadgroup(keys.GROUP, consumer, {stream: ">"}, count=1)
    _, delivered = pipe.execute()
    assert delivered and delivered[0][1][0][1][b"m"] == msg.encode()
    books = Books(redis_client, "k4b", ["first", "orphan"])
    assert client_app.app.AsyncResult(msg.id).get(timeout=15) == "orphan"
    assert books.figures()["done"] == 2 and books.figures()["duplicated"] == 0
    assert "gave back 1 message" in worker.log()
    report("delivery whose reply was lost, consumer alive", **books.figures())


# --- 5. a task longer than the visibility timeout, its worker alive ---------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("acks_late", [True, False], ids=["acks-late", "early-ack"])
def test_task_longer_than_visibility_timeout_runs_once(procs, client_app, redis_client, acks_late):
    app = client_app.app
    long_task = client_app.book.delay("k5", "long", 3 * VIS)             # 6 s against a 2 s timeout
    tokens = ["long"] + send_books(app, "k5", 3, 0.0)                     # reserved behind it for > 6 s
    first = procs.worker("-c", "1", "--prefetch-multiplier", "4", settings=conf(acks_late))
    wait_for(lambda: Books(redis_client, "k5", []).starts(), 10, "the long task to start")
    assert sum(app.broker.held(["default"]).values()) == (4 if acks_late else 3)
    procs.worker("-c", "2", settings=conf(acks_late))                   # an idle reaper, eager to steal
    books = Books(redis_client, "k5", tokens)
    assert long_task.get(timeout=20) == "long"
    wait_for(books.all_done, 10, "the reserved tasks")
    wait_for(lambda: settled(app), 10, "the queue to drain")
    figures = books.figures()
    assert figures["done"] == 4 and figures["duplicated"] == 0 and figures["started_twice"] == 0
    assert {pid for _, pid, _ in books.starts()} <= set(first.children())   # nobody else got them
    assert all(d == 0 for _, _, d in books.starts())
    report(f"task of 3x visibility_timeout, worker alive ({'acks_late' if acks_late else 'early ack'})",
           **figures, task_seconds=3 * VIS, visibility_timeout=VIS)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("acks_late", [False, True], ids=["early-ack", "acks-late"])
def test_frozen_worker_does_not_run_what_was_redelivered_meanwhile(procs, client_app, redis_client, acks_late):
    """A worker frozen (SIGSTOP of its whole process group: a paused VM) for longer than the visibility
    timeout: its prefetched messages are redelivered to another worker; once thawed, it must not run
    them too, whatever acks_late says (it looks them up before running an old buffer)."""
    app = client_app.app
    first = client_app.gated.apply_async(("k7", "first"))               # holds the frozen worker's process
    tokens = send_books(app, "k7", 3, 0.0)                              # fetched with it, waiting behind it
    frozen = procs.worker("-c", "1", "--prefetch-multiplier", "4", settings=conf(acks_late))
    wait_for(lambda: Books(redis_client, "k7", []).starts(), 10, "the first task to start")
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        other = procs.worker("-c", "2", "--prefetch-multiplier", "1", settings=conf(acks_late))
        books = Books(redis_client, "k7", tokens)
        wait_for(books.all_done, 20, "the frozen worker's prefetched tasks, redelivered")
        if acks_late:  # the running task was not acked either: redelivered too, it waits for a gate there
            wait_for(lambda: len(Books(redis_client, "k7", []).starts()) == 5, 20, "the first task, redelivered")
            redis_client.rpush("k7:gate", "go")
        other.signal(signal.SIGTERM)
        assert other.wait(20) == 0
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    redis_client.rpush("k7:gate", "go")                                  # the thawed worker finishes its task
    assert first.get(timeout=20) == "first"
    marker = client_app.book.delay("k7", "after")                        # queued behind whatever it still had
    assert marker.get(timeout=20) == "after"
    figures = Books(redis_client, "k7", tokens).figures()
    assert figures["done"] == 3 and figures["duplicated"] == 0, figures
    assert "redelivered elsewhere" in frozen.log()
    report(f"worker frozen past visibility_timeout ({'acks_late' if acks_late else 'early ack'})", **figures)


# --- 6. 1,000 countdowns over a few seconds, three workers ------------------------------------------

@pytest.mark.timeout(60)
def test_thousand_countdowns_three_workers_once_and_never_early(procs, client_app, redis_client):
    for _ in range(3):
        procs.worker("-c", "2", settings=conf(False))
    app = client_app.app
    import random
    rng = random.Random(6)
    pipe = redis_client.pipeline(transaction=False)
    tokens = [f"t{i}" for i in range(1000)]
    for t in tokens:
        app.publish(pipe, app.build_message("testapp.on_time", ("k6", t), None, {"countdown": rng.uniform(0.5, 4.0)}))
    pipe.execute()
    wait_for(lambda: redis_client.llen("k6") >= 1000, 30, "every countdown task")
    wait_for(lambda: settled(app), 10, "the queue to drain")
    lines = [json.loads(x) for x in redis_client.lrange("k6", 0, -1)]
    runs = {}
    for token, *_ in lines:
        runs[token] = runs.get(token, 0) + 1
    early = [(t, eta - ran_at) for t, ran_at, eta, _ in lines if ran_at < eta]
    late = sorted(ran_at - eta for _, ran_at, eta, _ in lines)
    workers_used = len({pid for *_, pid in lines})
    assert sorted(runs) == sorted(tokens) and set(runs.values()) == {1}
    assert early == []
    assert workers_used >= 3
    report("1000 countdowns over 3.5 s, three workers", sent=1000, done=len(runs),
           duplicated=sum(1 for n in runs.values() if n > 1), lost=1000 - len(runs), early=len(early),
           late_p50_ms=round(statistics.median(late) * 1000, 1),
           late_p99_ms=round(late[int(len(late) * 0.99) - 1] * 1000, 1), late_max_ms=round(late[-1] * 1000, 1),
           processes_used=workers_used)


# --- 7. poison messages --------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_poison_messages_end_in_the_dlq_or_failure_and_the_worker_keeps_serving(procs, client_app, redis_client):
    from minique import serializers
    from minique.exceptions import ContentDisallowed, DecodeError, NotRegistered
    worker = procs.worker("-c", "2", settings=conf(True, task_max_message_size=20_000))
    children = set(worker.children())
    app = client_app.app
    stream = "minique:{default}:p0"
    good = send_books(app, "k7", 100, 0.0, prefix="a")
    redis_client.xadd(stream, {"m": b"\x00garbage\xff"})                       # not msgpack
    redis_client.xadd(stream, {"m": serializers.pack([1, 2, 3])})               # msgpack, not a message
    redis_client.xadd(stream, {"m": serializers.pack({"v": 99, "i": "x"})})     # unknown protocol
    unknown = app.send_task("testapp.no_such_task", (1,))
    wrong_args = client_app.add.delay(1)
    huge = client_app.book.delay("k7", "x" * 50_000)
    pickled = app.build_message("testapp.book", ("k7", "pickled"), None, {})
    pickled = pickled._replace(content_type="pickle", body=b"\x80\x04N.")
    app.publish(redis_client, pickled)
    bad_body = app.build_message("testapp.book", ("k7", "bad"), None, {})._replace(body=b"{not json")
    app.publish(redis_client, bad_body)
    good += send_books(app, "k7", 100, 0.0, prefix="b")
    books = Books(redis_client, "k7", good)
    wait_for(books.all_done, 20, "the good tasks around the poison")
    with pytest.raises(NotRegistered, match="no_such_task"):
        unknown.get(timeout=10)
    with pytest.raises(TypeError, match="wrong arguments"):
        wrong_args.get(timeout=10)
    with pytest.raises(ContentDisallowed):
        app.AsyncResult(pickled.id).get(timeout=10)
    with pytest.raises(DecodeError):
        app.AsyncResult(bad_body.id).get(timeout=10)
    with pytest.raises(DecodeError, match="over task_max_message_size"):  # nobody waits on it forever
        huge.get(timeout=10)
    dead = wait_for(lambda: len(redis_client.xrange("minique:dlq")) >= 7 and redis_client.xrange("minique:dlq"),
                    10, "the dead letters")
    reasons = {f[b"task_id"].decode(): f[b"reason"].decode() for _, f in dead}
    anonymous = [f[b"reason"].decode() for _, f in dead if not f[b"task_id"]]
    assert len(dead) == 7, reasons
    assert "unknown task" in reasons[unknown.id]
    assert "over task_max_message_size" in reasons[huge.id]
    assert "pickle" in reasons[pickled.id]
    assert reasons[bad_body.id]
    assert reasons["x"].startswith("undecodable") and "protocol version" in reasons["x"]
    assert len(anonymous) == 2 and all(r.startswith("undecodable") for r in anonymous)
    assert wrong_args.id not in reasons                     # a plain failure, not a dead letter
    assert client_app.add.delay(2, 3).get(timeout=10) == 5  # still serving, same processes
    assert set(worker.children()) == children
    wait_for(lambda: settled(app), 10, "the queue to drain")
    figures = books.figures()
    assert figures["done"] == 200 and figures["duplicated"] == 0 and figures["lost"] == 0
    report("poison messages among 200 good ones", **figures, poison=8, dead_lettered=len(dead),
           failed_with_reason=4)


# --- recycling under load --------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["max-tasks-per-child", "max-memory-per-child"])
def test_recycling_loses_nothing_and_runs_nothing_twice(procs, client_app, redis_client, how):
    app = client_app.app
    if how == "max-tasks-per-child":
        worker = procs.worker("-c", "2", "--max-tasks-per-child", "7", settings=conf(False))
        tokens = send_books(app, "k8", 300, 0.0)
    else:
        worker = procs.worker("-c", "2", "--max-memory-per-child", "100000", settings=conf(False))
        tokens = [f"t{i}" for i in range(300)]
        # every 5th task leaves 20 MiB more behind: a process passes 100 MB after a few and is replaced
        app.send_many("testapp.book_and_grow", (((("k8", t, 20_000 if i % 5 == 4 else 0)), None)
                                                for i, t in enumerate(tokens)))
    books = Books(redis_client, "k8", tokens)
    wait_for(books.all_done, 40, "every task")
    wait_for(lambda: settled(app), 10, "the queue to drain")
    figures = books.figures()
    pids = {pid for _, pid, _ in books.starts()}
    assert figures["done"] == 300 and figures["duplicated"] == 0 and figures["started_twice"] == 0
    assert len(pids) >= (300 // 7 if how == "max-tasks-per-child" else 10)
    assert "recycles" in worker.log()
    report(f"recycling ({how})", **figures, processes_used=len(pids))
