"""Task and worker events in the capped stream, and the pieces that consume them (real Redis)."""
import time

from minique import events, keys, serializers, states
from minique.dashboard.state import TaskIndex
from minique.message import decode, make
from minique.metrics import CAPACITY, OVERFLOW, MetricsTable
from procs import wait_for


def all_events(client):
    _, found = events.read(client, "0-0", count=10000)
    return list(found)


def task_events(client, task_id):
    return [e for e in all_events(client) if e.get("uuid") == task_id]


def test_task_life_in_events(procs, client_app, redis_client):
    worker = procs.worker("-c", "1")
    ok = client_app.add.delay(2, 3)
    assert ok.get(timeout=10) == 5
    # the last task's events arrive without waiting for another task (the process went idle)
    evs = wait_for(lambda: len(task_events(redis_client, ok.id)) == 3 and task_events(redis_client, ok.id), 5,
                   "the events of the last task")
    assert [e["type"] for e in evs] == ["task-received", "task-started", "task-succeeded"]
    received, started, succeeded = evs
    for e in evs:
        assert (e["name"], e["queue"], e["hostname"], e["retries"]) == ("testapp.add", "default", worker.hostname, 0)
        assert e["pid"] in worker.children() and e["ts"] > 0
    assert received["sent_at"] <= started["ts"] and received["priority"] == 0
    assert (started["args"], started["kwargs"]) == ("[2, 3]", "{}")
    assert succeeded["runtime"] >= 0 and succeeded["root_id"] == ok.id

    bad = client_app.fail.delay("nope")
    bad.get(timeout=10, propagate=False)
    failed = wait_for(lambda: [e for e in task_events(redis_client, bad.id) if e["type"] == "task-failed"], 5,
                      "task-failed")[0]
    assert "nope" in failed["exception"]
    sent = decode(failed["message"])  # the failed message whole: what the dashboard's Retry re-sends
    assert (sent.id, sent.task, sent.body) == (bad.id, "testapp.fail", make("testapp.fail", ("nope",), {}).body)

    retried = client_app.retry_no_exc.delay("ev-retry")
    retried.get(timeout=10, propagate=False)
    wait_for(lambda: len([e for e in task_events(redis_client, retried.id)
                          if e["type"] in ("task-retried", "task-failed")]) == 2, 5, "both outcomes")
    kinds = [(e["type"], e["retries"]) for e in task_events(redis_client, retried.id)
             if e["type"] in ("task-retried", "task-failed")]
    assert kinds == [("task-retried", 0), ("task-failed", 1)]

    revoked = client_app.add.apply_async((1, 1), countdown=0.3)
    client_app.app.control.revoke(revoked.id)
    wait_for(lambda: any(e["type"] == "task-revoked" and e["reason"] == "revoked"
                         for e in task_events(redis_client, revoked.id)), 10, "task-revoked")

    unknown = client_app.app.send_task("testapp.no_such_task")
    rejected = wait_for(lambda: [e for e in task_events(redis_client, unknown.id)
                                 if e["type"] == "task-rejected"], 10, "task-rejected")[0]
    assert rejected["queue"] == "default" and "unknown task" in rejected["reason"]


def test_worker_events_online_heartbeat_offline(procs, client_app, redis_client):
    worker = procs.worker("-c", "1")
    wait_for(lambda: {"worker-online", "worker-heartbeat"} <= {e["type"] for e in all_events(redis_client)}, 10,
             "worker-online and a heartbeat")
    beat = [e for e in all_events(redis_client) if e["type"] == "worker-heartbeat"][0]
    assert beat["hostname"] == worker.hostname and beat["freq"] > 0 and beat["concurrency"] == 1
    assert "processed" in beat and "active" in beat
    worker.signal(15)
    assert worker.wait(15) == 0
    assert all_events(redis_client)[-1]["type"] == "worker-offline"


def test_without_events_nothing_is_written(procs, client_app, redis_client):
    procs.worker("-c", "1", "--without-events")
    assert client_app.add.delay(1, 1).get(timeout=10) == 2
    assert redis_client.xlen(keys.EVENTS) == 0


def test_big_arguments_cost_a_bounded_repr(procs, client_app, redis_client):
    procs.worker("-c", "1")
    r = client_app.identity.delay(list(range(100000)))
    assert len(r.get(timeout=10)) == 100000
    started = wait_for(lambda: [e for e in task_events(redis_client, r.id) if e["type"] == "task-started"], 5,
                       "task-started")[0]
    assert len(started["args"]) < 600 and started["args"].startswith("[[0, 1, 2")


def test_batches_are_capped_and_read_in_order(redis_client):
    ev = events.Events("h@x")
    for i in range(5):
        msg = make("t.x", (i,), {})
        ev.task("task-received", msg, hostname="h@x")
    assert redis_client.xlen(keys.EVENTS) == 0  # buffered
    ev.flush(redis_client)
    assert redis_client.xlen(keys.EVENTS) == 1  # one entry for the batch
    last, found = events.read(redis_client)
    assert [e["type"] for e in found] == ["task-received"] * 5
    assert list(events.read(redis_client, last)[1]) == []
    info = redis_client.xinfo_stream(keys.EVENTS)
    assert info["length"] <= events.MAXLEN


def test_the_reader_skips_every_malformed_entry_and_logs_each_kind_once(redis_client, caplog):
    """Any Redis client can add to the events stream: wrong types in every field, entries that are not
    msgpack, other versions, records of any shape. A reader skips them and reads on, again and again."""
    from malformed import good_event_entry, malformed_event_entries
    bad = malformed_event_entries()
    for i, fields in enumerate(bad):
        redis_client.xadd(keys.EVENTS, fields)
        redis_client.xadd(keys.EVENTS, good_event_entry(f"good-{i}"))
    reader = events.Reader(redis_client)
    with caplog.at_level("DEBUG", logger="minique.events"):
        found = []
        while True:
            batch = reader.read(count=7)
            if not batch:
                break
            found.extend(batch)
    assert [e["uuid"] for e in found] == [f"good-{i}" for i in range(len(bad))]
    assert all(e["type"] == "task-received" and e["hostname"] == "bad@test" for e in found)
    assert reader.skipped >= len(bad)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings and len(warnings) == len(set(warnings))  # one line per kind of problem
    assert len(warnings) + len([r for r in caplog.records if r.levelname == "DEBUG"]) == reader.skipped
    # the same entries read by a fresh reader (a restarted dashboard): the same good events
    _, again = events.read(redis_client, "0-0", count=10000)
    assert [e["uuid"] for e in again] == [f"good-{i}" for i in range(len(bad))]


def test_expand_skips_a_malformed_record_and_keeps_the_rest_of_its_batch():
    from malformed import batch, good_task_event
    now = time.time()
    header = ["t-1", "t.x", "q", 0, 0, None, None]
    records = [[0, now, 0, [now, None, None, 0]], [1, now, 0, 5], [-1, now, -1, {"type": ["x"]}],
               [2, now, 0, 0.5], [-1, now, -1, good_task_event("t-2")]]
    problems = []
    found = list(events.expand(batch(records, headers=[header]), problems.append))
    assert [(e["type"], e["uuid"]) for e in found] == [("task-received", "t-1"), ("task-succeeded", "t-1"),
                                                      ("task-received", "t-2")]
    assert problems == ["unreadable record (TypeError)", "event field 'type' is a list"]


def test_the_index_survives_events_the_reader_would_have_dropped():
    """The follower's index applies each event on its own: one it cannot apply is skipped."""
    from malformed import wrong_type_events
    index = TaskIndex()
    index.apply(wrong_type_events() + [ev("task-received", "ok"), {"type": None}, {"type": "task-x", "uuid": ["u"]}])
    assert index.get("ok")["state"] == states.RECEIVED
    assert index.summaries()["total"] >= 1 and index.stats()["events_seen"] == len(wrong_type_events()) + 3


class FakeClock:
    """Stands in for the `time` module of minique.events or minique.worker.observe in the pure tests:
    the clock moves only when something sleeps, and at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Batches(list):
    """Stands in for the consumer's pipeline in the pure tests: keeps each written batch, unpacked."""

    def xadd(self, key, fields, **kw):
        self.append(serializers.unpack(fields["b"]))


def test_started_events_carry_small_bodies_and_readers_show_the_same_reprs():
    """Pure: a small JSON/msgpack body rides as it is and the reader makes the reprs the worker would have;
    pickle and big bodies are shown by the worker; a task that is its own root reads back its own id."""
    ev, entries = events.Events("h@x"), Batches()
    msgs = [make("t.x", (1, "a", [2]), {"k": None}, task_id="id-0", root_id="id-0"),
            make("t.x", (1.5,), {}, serializer="msgpack"), make("t.x", ({"s"},), {}, serializer="pickle"),
            make("t.x", ("x" * 1000,), {}), make("t.x", (), {}, root_id="root-1")]
    broken = make("t.x", (), {})._replace(body=b"{not json")
    for msg in msgs + [broken]:
        ev.received(msg)
        ev.started(msg, *((["?"], {}) if msg is broken else msg.args_kwargs({"json", "msgpack", "pickle"})))
    ev.flush(entries)
    started = [e for e in events.expand(entries[0]) if e["type"] == "task-started"]
    shown = [(e["args"], e["kwargs"]) for e in started]
    assert shown[:3] == [("[1, 'a', [2]]", "{'k': None}"), ("[1.5]", "{}"), ("[{'s'}]", "{}")]
    assert shown[3][0].startswith("['xxxx") and len(shown[3][0]) < 200
    assert shown[5] == ("<undecodable body>", "")
    assert [e["root_id"] for e in started[:2]] == ["id-0", None] and started[4]["root_id"] == "root-1"


def test_a_small_message_is_its_own_header_and_a_success_is_one_record():
    """Pure: the usual task (small JSON/msgpack message, received and started together, then succeeded
    before the next flush) is one record whose header is the wire message; a flush while it runs
    records its start at once, and its outcome follows on its own; the reader sees the same events."""
    ev, entries = events.Events("h@x"), Batches()
    quick = make("t.quick", (1, "a"), {"k": 2}, task_id="q-1", root_id="q-1", queue="fast", priority=3)
    slow = make("t.slow", (), {}, task_id="s-1", parent_id="q-1", serializer="msgpack")
    ev.received(quick, quick.encode())
    ev.started(quick, [1, "a"], {"k": 2})
    ev.succeeded(quick, 0.25)
    ev.received(slow, slow.encode())
    ev.started(slow, [], {})
    ev.flush(entries)           # it is running: its start goes out now
    ev.task("task-failed", slow, exception="KeyError()")
    ev.flush(entries)
    first, second = entries
    assert first["h"][0] == quick.encode() and len(first["e"]) == 2  # quick: one record; slow: its start
    assert [len(e) for e in (first["e"], second["e"])] == [2, 1] and second["h"][0][0] == "s-1"
    evs = [e for batch in entries for e in events.expand(batch)]
    assert [(e["type"], e["uuid"]) for e in evs] == [
        ("task-received", "q-1"), ("task-started", "q-1"), ("task-succeeded", "q-1"),
        ("task-received", "s-1"), ("task-started", "s-1"), ("task-failed", "s-1")]
    received, started, succeeded = evs[:3]
    assert (received["name"], received["queue"], received["priority"], received["sent_at"]) == (
        "t.quick", "fast", 3, quick.sent_at)
    assert (started["args"], started["kwargs"], started["root_id"]) == ("[1, 'a']", "{'k': 2}", "q-1")
    assert succeeded["runtime"] == 0.25 and succeeded["ts"] == started["ts"] + 0.25
    assert evs[3]["parent_id"] == "q-1" and (evs[4]["args"], evs[4]["kwargs"]) == ("[]", "{}")
    assert evs[5]["exception"] == "KeyError()" and evs[5]["hostname"] == "h@x"


def test_after_a_slow_task_the_next_one_is_seen_running_before_it_ends(monkeypatch):
    """Pure: short tasks' events wait for their batch; after a task of SLOW seconds or more, the next
    task's task-received and task-started go out with the write made before it runs."""
    monkeypatch.setattr(events, "time", FakeClock())  # stands still: no batch comes due by itself
    ev, batches = events.Events("h@x"), Batches()

    def start(msg):
        ev.received(msg, msg.encode())
        ev.started(msg, [], {})
        ev.before_run(batches)
        return [[e["type"] for e in events.expand(batch)] for batch in batches]

    first, second, third = (make("t.x", (), {}) for _ in range(3))
    assert start(first) == []                # nothing was slow: it waits
    ev.succeeded(first, events.SLOW)
    assert start(second) == [["task-received", "task-started", "task-succeeded", "task-received", "task-started"]]
    ev.succeeded(second, 0.001)
    assert len(start(third)) == 1            # the one before was quick


def test_after_an_idle_wait_the_next_task_is_seen_running_before_it_ends(monkeypatch):
    """Pure: a process that waited for messages (its batch flushed) sends the next task's task-received
    and task-started with the write made before it runs, once; the tasks after it batch as before."""
    monkeypatch.setattr(events, "time", FakeClock())
    ev, batches = events.Events("h@x"), Batches()
    first, second = (make("t.x", (), {}) for _ in range(2))
    ev.idle = True  # (what the consumer sets when it flushed before blocking)
    ev.received(first, first.encode())
    ev.started(first, [], {})
    assert ev.unsent()
    ev.before_run(batches)
    assert [[e["type"] for e in events.expand(b)] for b in batches] == [["task-received", "task-started"]]
    assert not ev.unsent() and not ev.idle
    ev.succeeded(first, 0.001)
    ev.received(second, second.encode())
    ev.started(second, [], {})
    ev.before_run(batches)
    assert len(batches) == 1 and ev.unsent()  # busy again: it waits for its batch (or the Outbox's alarm)


def test_a_task_sent_to_an_idle_worker_and_a_long_task_after_short_ones_are_seen_running(procs, client_app,
                                                                                        redis_client):
    """The started event of a running task reaches the stream within about a second, both when the worker
    was idle and when the process was busy with short tasks just before (the Outbox's alarm)."""
    app = client_app.app
    # busy: short tasks preloaded, then a long one, all taken by one pool process one after another
    shorts = [client_app.add.delay(i, i) for i in range(30)]
    busy = client_app.hold.delay("ev-busy")
    worker = procs.worker("-c", "1")
    for r in shorts:
        assert r.get(timeout=10) is not None
    wait_for(lambda: redis_client.llen("ev-busy:started") == 1, 10, "the long task to start")
    started = wait_for(lambda: [e for e in task_events(redis_client, busy.id) if e["type"] == "task-started"], 3,
                       "the long task's task-started while it runs")
    assert started[0]["hostname"] == worker.hostname
    assert app.AsyncResult(busy.id).state != "SUCCESS"  # still running: the gate is not open
    redis_client.rpush("ev-busy:gate", 1)
    assert busy.get(timeout=10) == "ev-busy"

    # idle: the worker waits for messages; a long task sent now is seen at once
    idle = client_app.hold.delay("ev-idle")
    wait_for(lambda: redis_client.llen("ev-idle:started") == 1, 10, "the task sent to the idle worker to start")
    wait_for(lambda: [e for e in task_events(redis_client, idle.id) if e["type"] == "task-started"], 3,
             "its task-started while it runs")
    assert app.AsyncResult(idle.id).state != "SUCCESS"
    redis_client.rpush("ev-idle:gate", 1)
    assert idle.get(timeout=10) == "ev-idle"


# --- the index the dashboard builds from events ---------------------------------------------------------
def ev(kind, tid, retries=0, **kw):
    return dict(type=kind, uuid=tid, name="t.x", queue="q", retries=retries, ts=time.time(), hostname="w", **kw)


def test_index_orders_by_delivery_not_arrival():
    index = TaskIndex()
    # the retry's success can reach the stream before the first run's "retried" (different processes)
    index.apply([ev("task-received", "a"), ev("task-started", "a"), ev("task-received", "a", 1),
                 ev("task-started", "a", 1), ev("task-succeeded", "a", 1, runtime=0.1),
                 ev("task-retried", "a", 0, exception="KeyError()")])
    rec = index.get("a")
    assert (rec["state"], rec["retries"], rec["runtime"]) == (states.SUCCESS, 1, 0.1)
    assert [h["type"] for h in rec["history"]][-1] == "task-retried"


def test_index_is_bounded_and_links_children():
    index = TaskIndex(limit=3)
    index.apply([ev("task-received", "p"), ev("task-received", "c1", parent_id="p"),
                 ev("task-received", "c2", parent_id="p")])
    assert [c["id"] for c in index.children_of("p")] == ["c1", "c2"]
    index.apply([ev("task-received", "d"), ev("task-received", "e")])
    assert index.get("p") is None and index.get("c1") is None and len(index.tasks) == 3
    assert index.children == {}  # evicted with them
    page = index.summaries(limit=2)
    assert [t["id"] for t in page["tasks"]] == ["e", "d"] and page["total"] == 3


# --- shared-memory metrics --------------------------------------------------------------------------------
def test_metrics_regions_survive_a_new_writer_and_overflow():
    table = MetricsTable(2)
    first = table.recorder(0)
    first.event(2, "t.a", "q")
    second = table.recorder(0)  # the next process in the same slot
    second.event(2, "t.a", "q")
    table.recorder(1).event(2, "t.a", "q")
    assert table.snapshot()[(0, "t.a", "q")][2] == 3
    for i in range(CAPACITY + 10):
        second.event(0, f"t.{i}", "q")
    snap = table.snapshot()
    assert snap[(0, OVERFLOW, OVERFLOW)][0] == 12  # the label sets that did not fit
    assert sum(v[0] for k, v in snap.items() if k[0] == 0) == CAPACITY + 10


def test_a_task_waiting_for_its_rate_limit_or_a_slot_shows_as_waiting_with_the_reason():
    """task-throttled (a rate limit's reserved start, or a concurrency slot): WAITING, with when it runs
    next and why; the next delivery (task-received) takes it back to RECEIVED."""
    index = TaskIndex()
    base = {"uuid": "t1", "name": "proj.call_api", "queue": "default", "retries": 0, "hostname": "w1"}
    index.apply([dict(base, type="task-received", ts=1.0),
                 dict(base, type="task-throttled", ts=1.1, eta=5.0, reason="rate limit 10/m")])
    rec = index.tasks["t1"]
    assert (rec["state"], rec["next_run"], rec["waiting_for"]) == ("WAITING", 5.0, "rate limit 10/m")
    index.apply([dict(base, type="task-received", ts=5.0), dict(base, type="task-started", ts=5.1)])
    rec = index.tasks["t1"]
    assert rec["state"] == "STARTED" and "next_run" not in rec and "waiting_for" not in rec
