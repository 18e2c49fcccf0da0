"""Canvas planning, pure: what applying a signature, chain, group or chord would send."""
import copy
import re

import msgpack
import pytest

from minique import Minique, chain, chord, group
from minique.canvas import abandoned, from_dict


@pytest.fixture
def app(monkeypatch):
    monkeypatch.delenv("MINIQUE_BROKER_URL", raising=False)
    app = Minique("t")

    @app.task(name="add")
    def add(x, y):
        return x + y

    @app.task(name="tsum")
    def tsum(xs):
        return sum(xs)
    app.add, app.tsum = add, tsum
    return app


def names(calls):
    return [c[0] for c in calls]


def test_partial_application_and_immutability(app):
    [(name, args, kwargs, opts)] = app.add.s(2).plan((1,), None, {})
    assert (name, args) == ("add", (1, 2))
    [(_, args, _, _)] = app.add.si(2, 3).plan((1,), None, {})
    assert args == (2, 3)


def test_signature_options_win_over_defaults_and_set(app):
    sig = app.add.s(1, 2).set(queue="q", countdown=5)
    [(_, _, _, opts)] = sig.plan()
    assert opts["queue"] == "q" and opts["countdown"] == 5 and opts["task_id"]


def test_clone_is_independent(app):
    a = app.add.s(1)
    b = a.clone(args=(5,))
    assert b.args == (5, 1) and a.args == (1,)
    b.set(queue="x")
    assert "queue" not in a.options


def test_chain_sends_the_first_step_carrying_the_rest(app):
    c = app.add.s(1, 2) | app.add.s(3) | app.add.s(4)
    [(name, args, _, opts)], res = c.plan_with_result()
    assert name == "add" and args == (1, 2)
    assert [s["task"] for s in opts["chain"]] == ["add", "add"]
    second, third = (s["options"]["task_id"] for s in opts["chain"])
    assert res.id == third and res.parent.id == second and res.parent.parent.id == opts["task_id"]
    assert len({opts["task_id"], second, third}) == 3


def test_chain_forms_are_equivalent(app):
    a, b = app.add.s(1, 1), app.add.s(2)
    assert [t.name for t in chain(a, b).tasks] == [t.name for t in chain(a | b).tasks] == ["add", "add"]
    assert len(chain(a | b, app.add.s(3)).tasks) == 3


def test_group_members_know_their_group_and_index(app):
    g = group(app.add.s(i, i) for i in range(3))
    calls, res = g.plan_with_result()
    assert [c[3]["group_index"] for c in calls] == [0, 1, 2]
    assert len({c[3]["group_id"] for c in calls}) == 1
    assert res.id == calls[0][3]["group_id"] and [r.id for r in res.results] == [c[3]["task_id"] for c in calls]


def test_empty_group(app):
    assert group([]).plan() == []


def test_chord_members_carry_the_callback(app):
    c = chord([app.add.s(1, 1), app.add.s(2, 2)], app.tsum.s())
    calls, res = c.plan_with_result()
    infos = [opts["chord"] for *_, opts in calls]
    assert [i["n"] for i in infos] == [2, 2]
    assert infos[0]["cb"]["task"] == "tsum" and infos[0]["cb"]["options"]["task_id"] == res.id
    assert res.parent.id == infos[0]["id"] == calls[0][3]["group_id"]
    assert [r.id for r in res.parent.results] == [c[3]["task_id"] for c in calls]


def test_empty_chord_calls_back_at_once_with_an_empty_list(app):
    [(name, args, _, _)] = chord([], app.tsum.s()).plan()
    assert (name, args) == ("tsum", ([],))


def test_group_piped_into_a_task_is_a_chord(app):
    c = group(app.add.s(1, 1), app.add.s(2, 2)) | app.tsum.s()
    assert isinstance(c, chord)


def test_group_inside_a_chain_becomes_a_chord_with_the_rest(app):
    c = app.add.s(1, 1) | group(app.add.s(10), app.add.s(20)) | app.tsum.s()
    [(name, _, _, opts)] = c.plan()
    nxt = from_dict(opts["chain"][0])
    assert isinstance(nxt, chain) is False and nxt.subtask_type == "group"
    # the worker re-plans chain(group, tsum) with the parent's result: a chord
    replanned = chain(*[from_dict(s) for s in opts["chain"]]).plan((2,), None, {})
    assert names(replanned) == ["add", "add"]
    assert all(o["chord"]["cb"]["task"] == "tsum" for *_, o in replanned)
    assert [a for _, a, _, _ in replanned] == [(2, 10), (2, 20)]


def test_chord_inside_a_chain_passes_its_result_on(app):
    c = chord([app.add.s(1, 1)], app.tsum.s()) | app.add.s(100)
    calls = c.plan()
    cb = calls[0][3]["chord"]["cb"]
    assert cb["subtask_type"] == "chain"
    assert [t["task"] for t in cb["kwargs"]["tasks"]] == ["tsum", "add"]


def test_nested_three_levels_freeze_every_task_id(app):
    inner = group(app.add.s(1, 1) | app.add.s(1), app.add.s(2, 2))
    c = app.add.s(0, 0) | chord(inner, app.tsum.s() | app.add.s(1))
    c.freeze()
    ids = abandoned(app, c).failed_ids  # every task in it, had it to be given up
    assert len(set(ids)) == 6 and all(ids)
    assert set(ids) <= _ids(c.plan())    # and the messages carry those ids


def test_signatures_survive_msgpack(app):
    c = chord([app.add.s(1, 2), app.add.s(3, 4) | app.add.s(5)], app.tsum.s())
    c.freeze()
    back = from_dict(msgpack.unpackb(msgpack.packb(c), strict_map_key=False), app)
    assert isinstance(back, chord)
    assert back.body.id == c.body.id
    assert [t.name for t in back.tasks] == ["add", "minique.chain"]


def test_map_starmap_chunks(app):
    assert app.add.map([1, 2]).name == "minique.map"
    assert app.add.starmap([(1, 2)]).name == "minique.starmap"
    g = app.add.chunks([(i, i) for i in range(10)], 3).group()
    assert len(g.tasks) == 4


# --- planning leaves the canvas as it was ----------------------------------------------------------------

CANVASES = {
    "signature": lambda app: app.add.s(1).set(queue="q", link=app.tsum.s(), link_error=app.tsum.si([0])),
    "chain": lambda app: app.add.s(1, 2) | app.add.s(3) | app.add.s(4),
    "group": lambda app: group(app.add.s(i, i) for i in range(3)),
    "chord": lambda app: chord([app.add.s(1, 1), app.add.s(2, 2)], app.tsum.s()),
    "empty chord": lambda app: chord([], app.tsum.s()),
    "group in a chain": lambda app: app.add.s(1, 1) | group(app.add.s(10), app.add.s(20)) | app.tsum.s(),
    "chord in a chain": lambda app: chord([app.add.s(1, 1)], app.tsum.s()) | app.add.s(100) | app.add.s(1),
    "chains in a group": lambda app: group(app.add.s(1, 1) | app.add.s(2), app.add.s(3, 3) | app.add.s(4)),
    "nested": lambda app: (app.add.s(0, 0) | chord(group(app.add.s(1, 1) | app.add.s(1), app.add.s(2, 2)),
                                                   app.tsum.s() | app.add.s(1)) | app.add.s(5)).set(queue="q"),
}
# what a worker passes when it plans a follow-up, and what a step of a larger canvas carries
CONTEXTS = {
    "none": ((), None),
    "follow-up": ((7,), {"parent_id": "p", "root_id": "r", "queue": "other", "priority": 3}),
    "member of a chord": ((7,), {"task_id": "given", "group_id": "g", "group_index": 1, "chain": [{"task": "x"}],
                                 "chord": {"id": "g", "n": 2, "cb": {"task": "tsum"}}, "link": [{"task": "l"}]}),
}


@pytest.mark.parametrize("context", CONTEXTS.values(), ids=CONTEXTS)
@pytest.mark.parametrize("make", CANVASES.values(), ids=CANVASES)
def test_planning_leaves_the_canvas_as_it_was(app, make, context):
    sig = make(app)
    before = copy.deepcopy(sig)
    args, options = context
    assert sig.plan(args, None, options)
    assert sig == before
    sig.plan_with_result(args, None, options)
    assert sig == before


@pytest.mark.parametrize("make", CANVASES.values(), ids=CANVASES)
def test_planning_twice_gives_the_same_messages_with_fresh_ids(app, make):
    sig = make(app)
    first, second = sig.plan((7,)), sig.plan((7,))
    assert _ids_numbered(first) == _ids_numbered(second)
    assert not _ids(first) & _ids(second)  # nothing was frozen: every id is new


@pytest.mark.parametrize("make", CANVASES.values(), ids=CANVASES)
def test_a_frozen_canvas_plans_the_same_messages_every_time_with_its_ids(app, make):
    sig = make(app)
    res = sig.freeze()  # Celery's contract: freeze() sets the ids on the canvas
    frozen = copy.deepcopy(sig)
    first, res_first = sig.plan_with_result((7,))
    assert sig == frozen and first == sig.plan((7,))
    assert res_first.id == res.id and _result_ids(res_first) == _result_ids(sig.result())
    assert res.id in _ids(first)


UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _walk(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(k)
            yield from _walk(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk(v)
    else:
        yield value


def _ids(calls):
    return {v for v in _walk(calls) if isinstance(v, str) and UUID.match(v)}


def _ids_numbered(calls):
    """The calls with each id replaced by the order of its first appearance."""
    order = {}
    for v in _walk(calls):
        if isinstance(v, str) and UUID.match(v):
            order.setdefault(v, f"<id {len(order)}>")

    def swap(value):
        if isinstance(value, dict):
            return {swap(k): swap(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(swap(v) for v in value)
        return order.get(value, value) if isinstance(value, str) else value
    return swap(calls)


def _result_ids(res):
    """Ids of a result handle: itself, its group members, its parents."""
    out = []
    while res is not None:
        out.append((res.id, [_result_ids(r) for r in getattr(res, "results", [])]))
        res = res.parent
    return out
