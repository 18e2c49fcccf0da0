"""task_always_eager and apply(): tasks run in-process, no Redis involved."""
import pytest

from minique import Minique, states


@pytest.fixture
def app(monkeypatch):
    monkeypatch.delenv("MINIQUE_BROKER_URL", raising=False)
    app = Minique("eager", broker="redis://127.0.0.1:1/0")  # never connected to
    app.conf.task_always_eager = True
    return app


def test_delay_runs_in_process(app):
    @app.task
    def add(x, y):
        return x + y
    r = add.delay(2, 3)
    assert r.get() == 5 and r.state == states.SUCCESS


def test_eager_failure_and_propagation(app):
    @app.task
    def bad():
        raise KeyError("k")
    r = bad.delay()
    assert r.state == states.FAILURE
    with pytest.raises(KeyError):
        r.get()
    app.conf.task_eager_propagates = True
    with pytest.raises(KeyError):
        bad.delay()


def test_eager_retries_then_succeeds(app):
    calls = []

    @app.task(bind=True, max_retries=3)
    def flaky(self):
        calls.append(self.request.retries)
        if len(calls) < 3:
            raise self.retry(countdown=0)
        return "ok"
    assert flaky.delay().get() == "ok"
    assert calls == [0, 1, 2]


def test_retry_called_directly_reraises(app):
    @app.task(bind=True)
    def t(self):
        raise self.retry(exc=ValueError("direct"))
    with pytest.raises(ValueError, match="direct"):
        t()


# --- eager canvases behave as the canvases sent ------------------------------------------------------

@pytest.fixture
def calc(app):
    calls = []

    @app.task
    def add(x, y):
        return x + y

    @app.task
    def tsum(values):
        return sum(values)

    @app.task
    def boom(*args):
        raise ValueError("boom")

    @app.task
    def note(value):
        calls.append(value)
        return value

    class Calc:
        pass
    c = Calc()
    c.add, c.tsum, c.boom, c.note, c.calls = add, tsum, boom, note, calls
    return c


def test_eager_chain_passes_each_result_on(app, calc):
    from minique import chain, group
    r = chain(calc.add.s(1, 2), calc.add.s(10), calc.add.s(100)).apply_async()
    assert r.get() == 113 and r.state == states.SUCCESS
    assert r.parent.get() == 13 and r.parent.parent.get() == 3  # .parent walks back through the steps
    # a group inside a chain gives the next step the list of its results (as a chord would)
    r = (calc.add.s(1, 1) | group(calc.add.s(1), calc.add.s(2)) | calc.tsum.s()).delay()
    assert r.get() == 3 + 4


def test_eager_chain_failure_fails_the_rest_and_runs_the_errbacks(app, calc):
    from minique import chain
    c = chain(calc.add.s(1, 2), calc.boom.s(), calc.add.s(1))
    c.link_error(calc.note.s())
    c.link(calc.note.s())
    r = c.apply_async()
    assert r.state == states.FAILURE and isinstance(r.result, ValueError)
    with pytest.raises(ValueError, match="boom"):
        r.get()
    assert calc.calls == [r.id]  # the errback of the step that would have ended the chain, given its id
    calc.calls.clear()
    ok = chain(calc.add.s(1, 2), calc.add.s(3))
    ok.link(calc.note.s())
    assert ok.delay().get() == 6 and calc.calls == [6]  # the chain's link gets the chain's result


def test_eager_group_returns_a_group_result_of_eager_results(app, calc):
    from minique import group
    from minique.result import EagerResult, GroupResult
    g = group(calc.add.s(i, i) for i in range(4))
    r = g.apply_async()
    assert isinstance(r, GroupResult) and r.id and all(isinstance(m, EagerResult) for m in r.results)
    assert r.get() == [0, 2, 4, 6] and r.ready() and r.successful()
    frozen = group(calc.add.s(1, 1), calc.add.s(2, 2))
    handle = frozen.freeze()
    assert frozen.apply_async().id == handle.id  # the frozen ids are the ones used
    bad = group(calc.add.s(1, 1), calc.boom.s()).delay()
    assert bad.failed() and bad.completed_count() == 1
    with pytest.raises(ValueError):
        bad.get()


def test_eager_chord_calls_the_body_with_the_list_of_results(app, calc):
    from minique import chord, group
    r = chord([calc.add.s(i, i) for i in range(3)])(calc.tsum.s())  # was a KeyError
    assert r.get() == 0 + 2 + 4 and r.state == states.SUCCESS
    assert r.parent.get() == [0, 2, 4]  # the header's GroupResult
    assert chord(group(calc.add.s(1, 1)), calc.tsum.s()).apply_async().get() == 2
    assert (group(calc.add.s(1, 1), calc.add.s(2, 2)) | calc.tsum.s()).delay().get() == 6
    assert chord([], calc.tsum.s()).delay().get() == 0  # an empty header: the body gets []


def test_eager_chord_with_a_failed_member_fails_the_body_with_chord_error(app, calc):
    from minique import chord
    from minique.exceptions import ChordError
    body = calc.tsum.s()
    body.link_error(calc.note.s())
    r = chord([calc.add.s(1, 1), calc.boom.s()], body).apply_async()
    assert r.state == states.FAILURE and isinstance(r.result, ChordError)
    assert "Dependency" in str(r.result) and "boom" in str(r.result)
    assert calc.calls == [r.id]  # the body's errback ran, with the body's id


def test_eager_links_run_with_the_value_and_errbacks_with_the_id(app, calc):
    r = calc.add.apply_async((2, 3), link=calc.note.s())
    assert r.get() == 5 and calc.calls == [5]
    calc.calls.clear()
    r = calc.boom.apply_async(link=calc.note.s(), link_error=calc.note.s())
    assert r.failed() and calc.calls == [r.id]
    calc.calls.clear()
    app.conf.task_eager_propagates = True  # the errback runs before the failure propagates
    with pytest.raises(ValueError):
        calc.boom.apply((), link_error=calc.note.s(), task_id="known-id")
    assert calc.calls == ["known-id"]


def test_eager_signature_apply_keeps_its_frozen_id(app, calc):
    sig = calc.add.s(1, 2)
    handle = sig.freeze()
    assert sig.apply().id == handle.id == sig.delay().id


def test_update_state_stores_nothing_for_an_eager_task(app):
    seen = []

    @app.task(bind=True)
    def progress(self):
        self.update_state(state="PROGRESS", meta={"done": 1})  # no Redis is reachable: nothing is written
        seen.append(self.request.id)
        return "ok"
    assert progress.delay().get() == "ok" and seen
    with pytest.raises(ValueError, match="task_id"):
        progress.update_state(state="PROGRESS")  # not running: which task?
    with pytest.raises(ValueError, match="state name"):
        progress.update_state(task_id="x", state=None)


def test_eager_errback_that_is_a_chain_runs_whole(app, calc):
    from minique import chain
    errback = chain(calc.note.s(), calc.note.s())  # the id, then what the first step returned
    c = chain(calc.add.s(1, 1), calc.boom.s(), calc.add.s(1))
    c.link_error(errback)
    r = c.delay()
    assert r.failed() and calc.calls == [r.id, r.id]
