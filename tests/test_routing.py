"""Routing and message building (pure: nothing is sent)."""
import time

import pytest

from minique import Minique


@pytest.fixture
def app(monkeypatch):
    monkeypatch.delenv("MINIQUE_BROKER_URL", raising=False)
    app = Minique("t")

    @app.task(queue="from_task", priority=2)
    def queued():
        pass

    @app.task
    def plain():
        pass
    app.queued, app.plain = queued, plain
    return app


def test_default_queue(app):
    assert app.build_message(app.plain.name).queue == "default"


def test_explicit_beats_routes_beats_task_option(app):
    app.conf.task_routes = {app.queued.name: {"queue": "routed", "priority": 7}}
    m = app.build_message(app.queued.name)
    assert (m.queue, m.priority) == ("routed", 7)
    assert app.build_message(app.queued.name, options={"queue": "explicit"}).queue == "explicit"


def test_glob_routes_and_functions(app):
    app.conf.task_routes = [{"*.pla*": "globbed"}, lambda name, args, kwargs, options, task=None, **kw: "fn"]
    app._reset()
    assert app.build_message(app.plain.name).queue == "globbed"
    assert app.build_message(app.queued.name).queue == "fn"


def test_task_option_queue(app):
    assert app.build_message(app.queued.name).queue == "from_task"


def test_priority_is_validated(app):
    with pytest.raises(ValueError, match="0 to 9"):
        app.build_message(app.plain.name, options={"priority": 10})


def test_countdown_eta_expires(app):
    now = time.time()
    m = app.build_message(app.plain.name, options={"countdown": 10, "expires": 60})
    assert now + 9 < m.eta < now + 11
    assert now + 59 < m.expires < now + 61


def test_ignore_result_from_task_and_settings(app):
    assert app.build_message(app.plain.name).ignore_result is False
    app.conf.task_ignore_result = True
    assert app.build_message(app.plain.name).ignore_result is True


def test_signing(app):
    from minique.signing import verify
    app.conf.security_key = "secret"
    m = app.build_message(app.plain.name, (1,))
    assert verify(m, "secret") and not verify(m, "other")
    assert not verify(m._replace(body=b"[[2],{}]"), "secret")
