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
