"""Canvas against real workers: every form, error propagation, nesting, a 10,000-task chord."""
import pytest

from minique import chord, group
from minique.exceptions import ChordError
from minique.result import GroupResult
from procs import wait_for


@pytest.fixture
def t(procs, client_app):
    procs.worker("-c", "2")
    return client_app


def test_group_results_in_order(t):
    res = group(t.add.s(i, i) for i in range(10)).apply_async()
    assert res.get(timeout=10) == [i * 2 for i in range(10)]
    assert res.ready() and res.successful() and not res.failed() and res.completed_count() == 10


def test_empty_group(t):
    assert group([]).apply_async().get(timeout=5) == []


def test_group_save_restore(t):
    res = group(t.add.s(1, 1), t.add.s(2, 2)).apply_async()
    res.save()
    back = GroupResult.restore(res.id, app=t.app)
    assert back.get(timeout=10) == [2, 4]


def test_chain_passes_results_and_parent_walks_back(t):
    res = (t.add.s(1, 2) | t.add.s(3) | t.mul.s(10)).apply_async()
    assert res.get(timeout=10) == 60
    assert res.parent.get(timeout=1) == 6 and res.parent.parent.get(timeout=1) == 3


def test_chain_failure_stops_and_propagates(t, redis_client):
    res = (t.add.s(1, 1) | t.fail.si("mid") | t.record.si("after", "x")).apply_async()
    with pytest.raises(ValueError, match="mid"):
        res.get(timeout=10)
    assert redis_client.llen("after") == 0


def test_chord_callback_gets_ordered_list(t):
    res = chord([t.add.s(i, 0) for i in range(20)])(t.identity.s())
    assert res.get(timeout=10) == list(range(20))


def test_chord_header_failure_fails_callback_with_chord_error(t, redis_client):
    res = chord([t.add.s(1, 1), t.fail.si("header")], t.collect.s("cb_runs")).apply_async()
    with pytest.raises(ChordError, match="header"):
        res.get(timeout=10)
    assert redis_client.llen("cb_runs") == 0


def test_group_piped_into_task_is_a_chord(t):
    assert (group(t.add.s(1, 1), t.add.s(2, 2)) | t.tsum.s()).apply_async().get(timeout=10) == 6


def test_group_inside_chain(t):
    res = (t.add.s(1, 1) | group(t.add.s(10), t.add.s(20)) | t.tsum.s()).apply_async()
    assert res.get(timeout=10) == 34


def test_chord_inside_chain_and_chain_as_callback(t):
    res = (chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s() | t.add.s(100)) | t.mul.s(2)).apply_async()
    assert res.get(timeout=10) == 212


def test_chains_inside_group(t):
    res = group(t.add.s(1, 1) | t.mul.s(3), t.add.s(2, 2) | t.mul.s(3)).apply_async()
    assert res.get(timeout=10) == [6, 12]


def test_nested_three_levels(t):
    # header tasks of a group that follows a step get its result as partial args (Celery's rule): use si
    inner = chord([t.add.si(i, 1) | t.mul.s(2) for i in range(3)], t.tsum.s())  # (1+2+3)*2 = 12
    outer = t.add.s(0, 0) | group(inner, t.add.si(5, 5)) | t.tsum.s()
    assert outer.apply_async().get(timeout=15) == 22


def test_failure_deep_in_a_nested_chord_fails_the_outer_result(t):
    inner = chord([t.add.si(1, 1), t.fail.si("deep")], t.tsum.s())
    outer = chord([inner, t.add.si(5, 5)], t.tsum.s())
    with pytest.raises(ChordError):
        outer.apply_async().get(timeout=10)


def test_link_and_link_error(t, redis_client):
    ok = t.add.apply_async((2, 2), link=t.push_to.s("linked"))
    assert ok.get(timeout=10) == 4
    wait_for(lambda: redis_client.lrange("linked", 0, -1), 10, "the link to run")
    assert redis_client.lrange("linked", 0, -1) == [b"4"]
    bad = t.fail.apply_async(("x",), link_error=t.errback_record.s())
    with pytest.raises(ValueError):
        bad.get(timeout=10)
    wait_for(lambda: redis_client.lrange("errbacks", 0, -1), 10, "the errback to run")
    assert redis_client.lrange("errbacks", 0, -1) == [bad.id.encode()]


def test_map_starmap_chunks(t):
    assert t.identity.map([1, 2, 3]).delay().get(timeout=10) == [1, 2, 3]
    assert t.add.starmap([(1, 2), (3, 4)]).delay().get(timeout=10) == [3, 7]
    assert t.add.chunks([(i, i) for i in range(7)], 3).apply_async().get(timeout=10) == [[0, 2, 4], [6, 8, 10], [12]]


def test_replace(t):
    assert t.replace_with_add.delay(1).get(timeout=10) == 101


def test_chord_with_retrying_header(t, redis_client):
    res = chord([t.flaky.s("flaky1", 2), t.add.s(1, 1)], t.identity.s()).apply_async()
    assert res.get(timeout=15) == [3, 2]


def test_signature_delay_and_call(t):
    assert t.add.s(1, 1).delay().get(timeout=10) == 2
    assert t.add.s(2)(3) == 5  # calling a signature runs it here, as in Celery


@pytest.mark.timeout(180)
def test_chord_of_10000_across_two_workers_calls_back_once(procs, t, redis_client):
    procs.worker("-c", "1")  # a second worker process
    res = chord([t.identity.s(i) for i in range(10_000)], t.collect.s("big")).apply_async()
    assert res.get(timeout=150) == list(range(10_000))
    assert redis_client.lrange("big", 0, -1) == [b"10000"]


def test_bulk_send_shares_a_template_only_where_options_match(client_app, redis_client):
    """A group's members are encoded from one template while name and options match (not a worker test)."""
    from minique.message import decode
    add = client_app.add
    members = [add.s(1, 1), add.s(2, 2), add.s(3, 3).set(queue="other"), add.s(4, 4).set(queue="other"),
               add.s(5, 5).set(priority=5), add.s(6, 6), client_app.mul.s(7, 7), client_app.mul.s(8, 8)]
    res = group(members).apply_async()
    sent = {}
    for key in ("minique:{default}:p0", "minique:{other}:p0", "minique:{default}:p5"):
        for _, fields in redis_client.xrange(key):
            msg = decode(fields[b"m"])
            sent[msg.id] = msg
    ids = [r.id for r in res.results]
    assert set(ids) == set(sent)
    got = [(sent[i].task.split(".")[-1], sent[i].args_kwargs({"json"})[0], sent[i].queue, sent[i].priority,
            sent[i].group_index, sent[i].group_id, sent[i].root_id) for i in ids]
    expected = [("add", 1, "default", 0), ("add", 2, "default", 0), ("add", 3, "other", 0), ("add", 4, "other", 0),
                ("add", 5, "default", 5), ("add", 6, "default", 0), ("mul", 7, "default", 0), ("mul", 8, "default", 0)]
    assert got == [(name, [n, n], q, p, i, res.id, ids[i]) for i, (name, n, q, p) in enumerate(expected)]


def test_send_calls_into_a_pipeline_waits_for_it_and_the_bulk_path_sends_every_chunk(client_app, redis_client,
                                                                                       monkeypatch):
    from minique import app as app_module
    from minique.message import decode
    app, queue = client_app.app, "minique:{default}:p0"
    calls = [(client_app.add.name, (i, i), {}, {"task_id": f"id-{i}"}) for i in range(5)]
    pipe = redis_client.pipeline(transaction=False)
    app.send_calls(calls[:2], pipe)
    assert redis_client.xlen(queue) == 0              # in the caller's pipeline until it runs
    pipe.execute()
    app.send_calls(calls[2:3])                        # one call: sent at once
    monkeypatch.setattr(app_module, "SEND_CHUNK", 1)  # the bulk path, a round trip per message
    app.send_calls(calls[3:])
    sent = [decode(fields[b"m"]) for _, fields in redis_client.xrange(queue)]
    assert [(m.id, m.args_kwargs({"json"})[0]) for m in sent] == [(f"id-{i}", [i, i]) for i in range(5)]


def test_apply_async_leaves_the_canvas_as_it_was_and_its_result_names_what_was_sent(client_app, redis_client):
    import copy

    from minique.message import decode
    add, tsum = client_app.add, client_app.tsum
    c = add.s(1, 1) | chord([add.s(2), add.s(3)], tsum.s()) | add.s(10)
    before = copy.deepcopy(c)
    res = c.apply_async()
    assert c == before
    [(_, fields)] = redis_client.xrange("minique:{default}:p0")
    first = decode(fields[b"m"])                                     # add(1, 1), carrying the rest
    the_chord, last = first.chain
    assert res.id == last["options"]["task_id"]                      # add(10)
    assert res.parent.id == the_chord["kwargs"]["body"]["options"]["task_id"]  # the chord's callback
    members = the_chord["kwargs"]["header"]["kwargs"]["tasks"]
    assert [r.id for r in res.parent.parent.results] == [m["options"]["task_id"] for m in members]
    assert res.parent.parent.id == the_chord["kwargs"]["header"]["options"]["task_id"]
