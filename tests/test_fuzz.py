"""Property (Hypothesis): no bad record takes a live worker or dashboard down, nothing good is lost.

One live worker (Streams, queue `default`), one live worker on the Lists broker (queue `lq`) and a
live dashboard get random batches of bad input — stream entries with random fields, envelopes
with one field of a random type, delayed-set members, list elements, control messages and event
entries — interleaved with good tasks. After each batch:
- both worker parents and all their pool processes are the ones started (none died);
- every good task of the batch succeeded, once;
- every bad message whose id is known is in a final state or in the dead letters with a reason;
- `inspect ping` answers from both workers; the dashboard serves its pages.
"""
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from minique import keys, serializers, states
from minique.brokers import ListsBroker
from minique.message import make
from procs import wait_for
from test_dashboard import start_dashboard

pytestmark = pytest.mark.timeout(240)

ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)
ENVELOPE_KEYS = ["i", "t", "b", "ct", "q", "p", "r", "eta", "exp", "root", "par", "grp", "gi", "chord", "chain",
                 "link", "err", "ir", "tl", "stl", "h", "ts", "sig", "v"]

stream_entry = st.dictionaries(st.sampled_from([b"m", b"d", b"x"]), st.binary(max_size=40), min_size=1, max_size=3)
mutated_envelope = st.tuples(st.sampled_from(ENVELOPE_KEYS), ANY_VALUE)
delayed_member = st.binary(min_size=1, max_size=40)
list_element = st.binary(max_size=6)
control_message = ANY_VALUE | st.dictionaries(st.sampled_from(["cmd", "args", "dest", "reply_to", "id"]), ANY_VALUE,
                                              max_size=4)
event_entry = st.dictionaries(st.sampled_from([b"b", b"x"]), st.binary(max_size=40) | ANY_VALUE.map(serializers.pack),
                              min_size=1, max_size=2)
bad_input = st.one_of(
    st.tuples(st.just("stream"), stream_entry), st.tuples(st.just("envelope"), mutated_envelope),
    st.tuples(st.just("delayed"), delayed_member), st.tuples(st.just("list"), list_element),
    st.tuples(st.just("control"), control_message), st.tuples(st.just("event"), event_entry))


def family(proc):
    return {proc.pid, *proc.children()}


def test_bad_records_never_take_anything_down(procs, client_app, redis_client):
    app = client_app.app
    streams_worker = procs.worker("-c", "2")
    lists_worker = procs.worker("-c", "1", "-Q", "lq",
                                settings=json.dumps({"broker_transport_options": {"queue_type": "lists"}}))
    dash = start_dashboard(procs)
    lists = ListsBroker(redis_client)
    workers = {streams_worker.hostname: family(streams_worker), lists_worker.hostname: family(lists_worker)}
    counter = iter(range(10**6))

    def inject(kind, value):
        """Add one bad record; returns the task id it concerns, if one is known."""
        if kind == "stream":
            redis_client.xadd(keys.queue("default", 0), value)
        elif kind == "envelope":
            field, junk = value
            msg = make("testapp.add", (1, 2))
            raw = serializers.unpack(msg.encode())
            raw[field] = junk
            redis_client.xadd(keys.queue("default", 0), {"m": serializers.pack(raw)})
            return raw.get("i") if isinstance(raw.get("i"), str) else None
        elif kind == "delayed":
            redis_client.zadd(keys.delayed("default"), {value: 0})
        elif kind == "list":
            redis_client.lpush(keys.queue("lq", 0), value)
        elif kind == "control":
            redis_client.publish(keys.CONTROL, serializers.pack(value))
        else:
            redis_client.xadd(keys.EVENTS, value)
        return None

    def settled_or_dead(task_id):
        if app.backend.get_meta(task_id)["status"] in states.READY_STATES:
            return True
        return any(f.get(b"task_id") == task_id.encode() and f.get(b"reason")
                   for _, f in redis_client.xrange(keys.DLQ))

    @settings(max_examples=20, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(batch=st.lists(bad_input, min_size=1, max_size=6))
    def check(batch):
        n = next(counter)
        ids = [inject(kind, value) for kind, value in batch]
        good = [client_app.record.delay(f"fz{n}", f"s{i}") for i in range(3)]
        good_lists = f"fzl{n}"
        msg = make("testapp.record", (good_lists, "l0"), queue="lq")
        lists.send(redis_client, "lq", 0, msg.encode())
        assert [r.get(timeout=20) for r in good] == ["s0", "s1", "s2"]
        wait_for(lambda: redis_client.llen(good_lists) == 1, 20, "the good task on the Lists worker")
        assert sorted(redis_client.lrange(f"fz{n}", 0, -1)) == [b"s0", b"s1", b"s2"]  # once each
        for task_id in filter(None, ids):
            wait_for(lambda task_id=task_id: settled_or_dead(task_id), 20, f"bad message {task_id} settled")
        for host, pids in workers.items():
            proc = streams_worker if host == streams_worker.hostname else lists_worker
            assert proc.popen.poll() is None, proc.log()[-3000:]
            assert family(proc) == pids, f"a process of {host} died:\n{proc.log()[-3000:]}"
        replies = {h for reply in app.control.ping(timeout=2.0) for h in reply}
        assert set(workers) <= replies, replies
        assert dash.proc.popen.poll() is None, dash.proc.log()[-3000:]
        dash.get("/api/overview")
        dash.get("/api/tasks")
        dash.get("/api/dlq")

    check()
    for reason in (f.get(b"reason") for _, f in redis_client.xrange(keys.DLQ)):
        assert reason  # every dead letter says why
