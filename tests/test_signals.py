"""minique.signals.Signal: connect/disconnect/send as Celery's (no Redis: the wiring is tested where
each signal is sent)."""
import gc
import logging

import pytest

from minique.signals import Signal


def test_connect_send_and_decorator_forms():
    sig = Signal("s")
    seen = []

    def plain(sender, **kw):
        seen.append(("plain", sender, kw))
        return 1

    sig.connect(plain)

    @sig.connect
    def decorated(sender, **kw):
        seen.append(("decorated", sender, kw))

    @sig.connect(sender="a")
    def only_a(sender, **kw):
        seen.append(("only_a", sender, kw))

    responses = sig.send("b", x=1)
    assert [r[1] for r in responses] == [1, None]
    assert [s[0] for s in seen] == ["plain", "decorated"]
    assert seen[0][2] == {"signal": sig, "x": 1}
    seen.clear()
    sig.send("a")
    assert [s[0] for s in seen] == ["plain", "decorated", "only_a"]


def test_sender_objects_match_by_identity():
    sig = Signal("s")
    one, other = object(), object()
    got = []
    sig.connect(lambda sender, **kw: got.append(sender), sender=one, weak=False)
    sig.send(other)
    sig.send(one)
    assert got == [one]


def test_connecting_twice_is_one_receiver_and_disconnect_removes_it():
    sig = Signal("s")

    def r(**kw):
        pass

    sig.connect(r)
    sig.connect(r)
    assert len(sig.receivers) == 1
    assert sig.disconnect(r) is True
    assert sig.disconnect(r) is False
    assert sig.receivers == []
    sig.connect(r, dispatch_uid="one")
    sig.connect(lambda **kw: None, dispatch_uid="one", weak=False)
    assert len(sig.receivers) == 1
    assert sig.disconnect(dispatch_uid="one")


def test_weak_receivers_go_away_strong_ones_stay():
    sig = Signal("s")

    def make():
        def inner(**kw):
            return "inner"
        return inner

    sig.connect(make())
    sig.connect(make(), weak=False)
    gc.collect()
    assert [r for _, r in sig.send(None)] == ["inner"]
    assert len(sig.receivers) == 1


def test_bound_methods_are_held_weakly_by_their_object():
    sig = Signal("s")

    class Handler:
        def on(self, **kw):
            return "on"

    h = Handler()
    sig.connect(h.on)  # a bound method is a new object each time: held through its instance
    gc.collect()
    assert [r for _, r in sig.send(None)] == ["on"]
    del h
    gc.collect()
    assert sig.send(None) == []


def test_a_receiver_that_raises_is_logged_and_the_rest_still_run(caplog):
    sig = Signal("s")
    ran = []

    def bad(**kw):
        raise RuntimeError("boom")

    sig.connect(bad)
    sig.connect(lambda **kw: ran.append(1), weak=False)
    with caplog.at_level(logging.ERROR, logger="minique.signals"):
        responses = sig.send(None)
    assert isinstance(responses[0][1], RuntimeError)
    assert ran == [1]
    assert "boom" in caplog.text


def test_receivers_must_take_keyword_arguments():
    sig = Signal("s")
    with pytest.raises(ValueError, match="keyword"):
        sig.connect(lambda sender: None)
    with pytest.raises(TypeError):
        sig.connect(42)  # type: ignore[arg-type]
