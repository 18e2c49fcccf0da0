"""The pure parts of results: children as recorded and read back, result_extended's encoding, states."""
from minique import Minique, context, serializers, states
from minique.backend import ResultBackend
from minique.result import AsyncResult, GroupResult, _child


def _backend():
    return ResultBackend(None, None, "json", frozenset({"json"}))  # no client: encoding and decoding only


def test_add_child_keeps_order_and_gathers_a_group_sent_together():
    req = context.Request(id="parent")
    context.add_child(req, "a", None)
    context.add_child(req, "g1-0", "g1")
    context.add_child(req, "g1-1", "g1")
    context.add_child(req, "b", None)
    context.add_child(req, "g2-0", "g2")
    assert req.children == ["a", ["g1", ["g1-0", "g1-1"]], "b", ["g2", ["g2-0"]]]


def test_stored_children_come_back_as_results():
    app = Minique("unit", broker="redis://127.0.0.1:1/0")
    single, grp = _child("a", app), _child(["g", ["x", "y"]], app)
    assert isinstance(single, AsyncResult) and single.id == "a"
    assert isinstance(grp, GroupResult) and grp.id == "g" and [r.id for r in grp.results] == ["x", "y"]


def test_build_message_notes_children_of_the_running_task_only():
    app = Minique("unit", broker="redis://127.0.0.1:1/0")
    req = context.Request(id="parent-id", root_id="root-id", task="t")
    context.push(req)
    try:
        msg = app.build_message("x.y", (1,), None, {"group_id": "g", "group_index": 0})
        other = app.build_message("x.y", (2,), None, {"parent_id": "someone-else"})
    finally:
        context.pop()
    assert msg.parent_id == "parent-id" and msg.root_id == "root-id"
    assert req.children == [["g", [msg.id]]] and other.parent_id == "someone-else"
    outside = app.build_message("x.y", (3,))
    assert outside.parent_id is None and req.children == [["g", [msg.id]]]
    called = context.Request(id="direct", called_directly=True)
    context.push(called)
    try:
        app.build_message("x.y", (4,))
    finally:
        context.pop()
    assert called.children is None


def test_pop_returns_what_was_pushed():
    req = context.Request(id="r")
    context.push(req)
    assert context.pop() is req
    context.push(lambda: req)
    assert context.pop() is not req  # never asked for: the callable itself


def test_extended_arguments_round_trip_with_the_result_serializer():
    backend = _backend()
    raw = backend.encode_meta("t1", states.SUCCESS, 5, extra={"name": "x.add", "args": (2,), "kwargs": {"y": 3},
                                                              "worker": "w@h", "queue": "q", "retries": 1})
    stored = serializers.unpack(raw)
    assert stored["args"] == b"[2]" and stored["kwargs"] == b'{"y":3}'  # encoded as the result is (json)
    meta = backend.decode_meta(raw)
    assert (meta["name"], meta["args"], meta["kwargs"], meta["worker"], meta["queue"], meta["retries"]) == (
        "x.add", [2], {"y": 3}, "w@h", "q", 1)
    assert meta["date_done"] is not None


def test_extended_arguments_that_will_not_encode_are_kept_as_reprs():
    class Opaque:  # (bytes encode under json since it carries kombu's typed values: this still does not)
        def __repr__(self) -> str:
            return "<opaque>"

    backend = _backend()
    meta = backend.decode_meta(backend.encode_meta("t2", states.SUCCESS, 1, extra={"args": (Opaque(),), "kwargs": {}}))
    assert meta["args"] == "(<opaque>,)" and meta["kwargs"] == "{}"
    unreadable = backend.decode_meta(backend.encode_meta("t3", states.FAILURE, ValueError("x"),
                                                         extra={"args": None, "kwargs": None}))
    assert unreadable["args"] is None and unreadable["kwargs"] is None


def test_a_custom_state_is_not_ready_and_its_meta_is_the_info():
    backend = _backend()
    meta = backend.decode_meta(backend.encode_meta("t4", "PROGRESS", {"done": 3}))
    assert meta["status"] == "PROGRESS" and meta["result"] == {"done": 3} and meta["date_done"] is None
    assert "PROGRESS" not in states.READY_STATES


def test_custom_states_sort_between_the_unready_and_the_final_ones():
    progress = states.state("PROGRESS")
    assert progress > states.state(states.STARTED) and progress > states.RETRY
    assert progress < states.state(states.SUCCESS) and progress < states.FAILURE
    assert states.precedence("PROGRESS") == states.precedence("ANOTHER")
