"""What a task's outcome means downstream, as the worker is told it (pure: no Redis).

The worker gets a message, runs it, and asks canvas what follows: success_calls (links, the next
chain step), failure_downstream (errbacks, the abandoned rest of a chain, the chord that may end)
and abandoned (a signature that will never run). Every case plans a canvas as a client would,
turns the calls into the messages a worker decodes, lets some tasks succeed (sending what their
success sends), then fails one.
"""
import pytest

from minique import Minique, chord, group
from minique.canvas import abandoned, failure_downstream, success_calls
from minique.message import decode


@pytest.fixture
def app(monkeypatch):
    monkeypatch.delenv("MINIQUE_BROKER_URL", raising=False)
    return Minique("t")


def sig(app, name, task_id, *args, errbacks=()):
    """A task signature with its id fixed (so the expectations can name it) and its errbacks."""
    options = {"task_id": task_id}
    if errbacks:
        options["link_error"] = [app.signature("eb", (), None, task_id=e) for e in errbacks]
    return app.signature(name, args, None, **options)


def messages(app, calls):
    """The messages a worker would decode for planned calls, by task id."""
    return {m.id: m for m in (decode(app.build_message(n, a, k, o).encode()) for n, a, k, o in calls)}


def run(app, canvas, succeed):
    """What a canvas sends, then what the tasks in `succeed` send as they succeed in turn."""
    sent = messages(app, canvas.plan())
    for task_id in succeed:
        m = sent[task_id]
        sent.update(messages(app, success_calls(app, m.id, m.root_id, m.links, m.chain, "value")))
    return sent


def summary(app, down):
    """(failed ids, errbacks as (name, its arg, parent id), chords as (chord id, member id, what failing
    their callback means)): the whole downstream, the chords' callbacks taken as claimed."""
    return (down.failed_ids,
            [(name, args, options.get("parent_id")) for name, args, _, options in down.errbacks],
            [(chord_id, member_id, summary(app, abandoned(app, callback)))
             for chord_id, member_id, callback in down.chords])


NOTHING = ([], [], [])

CASES = {
    "plain task with two errbacks": (
        lambda app: sig(app, "a", "A", errbacks=["E1", "E2"]), [], "A",
        ([], [("eb", ("A",), "A"), ("eb", ("A",), "A")], [])),
    "plain task without any": (
        lambda app: sig(app, "a", "A"), [], "A", NOTHING),
    "chain with steps left, errbacks on them": (
        lambda app: sig(app, "a", "A") | sig(app, "b", "B", errbacks=["EB"]) | sig(app, "c", "C", errbacks=["EC"]),
        [], "A",
        (["B", "C"], [("eb", ("B",), None), ("eb", ("C",), None)], [])),
    "chain, failing half-way": (
        lambda app: sig(app, "a", "A") | sig(app, "b", "B", errbacks=["EB"]) | sig(app, "c", "C", errbacks=["EC"]),
        ["A"], "B",
        (["C"], [("eb", ("B",), "B"), ("eb", ("C",), None)], [])),
    "chain's last step": (
        lambda app: sig(app, "a", "A") | sig(app, "b", "B"), ["A"], "B", NOTHING),
    "chain ending in a group": (
        lambda app: sig(app, "a", "A") | group(sig(app, "b", "B", errbacks=["EB"]), sig(app, "c", "C")),
        [], "A",
        (["B", "C"], [("eb", ("B",), None)], [])),
    "chord member": (
        lambda app: chord(group(sig(app, "a", "A"), sig(app, "b", "B")).set(task_id="K"),
                          sig(app, "cb", "CB", errbacks=["ECB"])),
        [], "A",
        ([], [], [("K", "A", (["CB"], [("eb", ("CB",), None)], []))])),
    "nested chord in a chain, before it": (
        lambda app: (sig(app, "a", "A") | chord(group(sig(app, "b", "B"), sig(app, "c", "C")).set(task_id="K"),
                                                sig(app, "d", "D")) | sig(app, "e", "E", errbacks=["EE"])),
        [], "A",
        (["B", "C", "D", "E"], [("eb", ("E",), None)], [])),
    "nested chord in a chain, a member of it": (
        lambda app: (sig(app, "a", "A") | chord(group(sig(app, "b", "B"), sig(app, "c", "C")).set(task_id="K"),
                                                sig(app, "d", "D")) | sig(app, "e", "E", errbacks=["EE"])),
        ["A"], "B",
        ([], [], [("K", "B", (["D", "E"], [("eb", ("E",), None)], []))])),
    "errbacks at three levels: a member, its chord's callback, the outer chord's callback": (
        lambda app: chord(group(chord(group(sig(app, "a", "A", errbacks=["EA"]), sig(app, "b", "B")).set(task_id="K1"),
                                      sig(app, "cb", "CB1", errbacks=["ECB1"])),
                                sig(app, "c", "C")).set(task_id="K2"),
                          sig(app, "cb", "CB2", errbacks=["ECB2"])),
        [], "A",
        ([], [("eb", ("A",), "A")],
         [("K1", "A", (["CB1"], [("eb", ("CB1",), None)],
                       [("K2", "CB1", (["CB2"], [("eb", ("CB2",), None)], []))]))])),
    "a chain as a chord member, failing before its end": (
        lambda app: chord(group(sig(app, "a", "A") | sig(app, "b", "B", errbacks=["EB"]), sig(app, "c", "C"))
                          .set(task_id="K"), sig(app, "cb", "CB")),
        [], "A",
        (["B"], [("eb", ("B",), None)], [("K", "B", (["CB"], [], []))])),
}


@pytest.mark.parametrize("make, succeed, failing, expected", CASES.values(), ids=CASES)
def test_what_a_failure_means_downstream(app, make, succeed, failing, expected):
    m = run(app, make(app), succeed)[failing]
    assert summary(app, failure_downstream(app, m.id, m.errbacks, m.chain, m.chord)) == expected


def test_a_signature_that_will_never_run(app):
    c = sig(app, "a", "A") | chord(group(sig(app, "b", "B"), sig(app, "c", "C", errbacks=["EC"])).set(task_id="K"),
                                   sig(app, "d", "D", errbacks=["ED"]))
    # the chord's members would not end anything themselves: only its callback's errbacks run
    assert summary(app, abandoned(app, c)) == (["A", "B", "C", "D"], [("eb", ("D",), None)], [])
    assert summary(app, abandoned(app, dict(group(sig(app, "b", "B", errbacks=["EB"]))))) == (
        ["B"], [("eb", ("B",), None)], [])  # (as a message carries it: a plain dict)


SUCCESS = {
    "plain task": (lambda app: sig(app, "a", "A"), []),
    "links, with the value first": (
        lambda app: sig(app, "a", "A").set(link=[app.signature("l1", (1,)), app.signature("l2").set(immutable=True)]),
        [("l1", ("value", 1), None), ("l2", (), None)]),
    "next chain step, carrying the rest": (
        lambda app: sig(app, "a", "A") | sig(app, "b", "B", 2) | sig(app, "c", "C"),
        [("b", ("value", 2), ["C"])]),
    "last chain step": (
        lambda app: sig(app, "a", "A") | sig(app, "b", "B"), [("b", ("value",), None)]),
    "links, then the chain": (
        lambda app: sig(app, "a", "A").set(link=[app.signature("l1")]) | sig(app, "b", "B"),
        [("l1", ("value",), None), ("b", ("value",), None)]),
    "a group next: every member gets the value": (
        lambda app: sig(app, "a", "A") | group(sig(app, "b", "B"), sig(app, "c", "C")),
        [("b", ("value",), None), ("c", ("value",), None)]),
}


@pytest.mark.parametrize("make, expected", SUCCESS.values(), ids=SUCCESS)
@pytest.mark.parametrize("root", [None, "R"])
def test_what_a_success_sends(app, make, expected, root):
    m = messages(app, make(app).plan())["A"]
    calls = success_calls(app, m.id, root, m.links, m.chain, "value")
    assert [(name, args, [s["options"]["task_id"] for s in o["chain"]] if o.get("chain") else None)
            for name, args, _, o in calls] == expected
    assert all(o["parent_id"] == "A" and o["root_id"] == (root or "A") for *_, o in calls)
