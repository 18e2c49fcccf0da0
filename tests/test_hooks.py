"""Task hooks and task signals in eager mode (Task.apply), the hooks found per task class, async def
refused, ExceptionInfo, headers as request attributes. Through real workers: tests/test_hooks_worker.py."""
import asyncio

import pytest

from minique import Minique, Task, signals
from minique.context import Request
from minique.exceptions import ConfigurationError, ExceptionInfo
from minique.trace import Hooks

calls: list = []


class Recording(Task):
    """Records every hook call with its arguments."""

    def before_start(self, task_id, args, kwargs):
        calls.append(("before_start", task_id, args, kwargs))

    def on_success(self, retval, task_id, args, kwargs):
        calls.append(("on_success", retval, task_id, args, kwargs))

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        calls.append(("on_failure", exc, task_id, args, kwargs, einfo))

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        calls.append(("on_retry", exc, task_id, args, kwargs, einfo))

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        calls.append(("after_return", status, retval, task_id, args, kwargs, einfo))


class Raising(Task):
    def before_start(self, task_id, args, kwargs):
        raise RuntimeError("before_start broke")

    def on_success(self, retval, task_id, args, kwargs):
        raise RuntimeError("on_success broke")

    def after_return(self, *args):
        raise RuntimeError("after_return broke")


class Session(Task):
    """Celery's common pattern: a class whose __call__ wraps the body (a DB session...)."""

    def __call__(self, *args, **kwargs):
        calls.append(("enter", self.request.id))
        try:
            return super().__call__(*args, **kwargs)
        finally:
            calls.append(("exit",))


@pytest.fixture
def app():
    calls.clear()
    yield Minique("t", broker="redis://localhost:1/0")
    calls.clear()


@pytest.fixture
def received():
    """Connects a recorder to every task signal sent eagerly; disconnected after the test."""
    seen: list = []
    sigs = (signals.task_prerun, signals.task_postrun, signals.task_success, signals.task_failure,
            signals.task_retry)

    def recorder(signal, sender, **kwargs):
        seen.append((signal.name, sender, kwargs))

    for sig in sigs:
        sig.connect(recorder, weak=False)
    yield seen
    for sig in sigs:
        sig.disconnect(recorder)


def test_plain_tasks_have_no_hooks_and_subclasses_are_found_once():
    app = Minique("t", broker="redis://localhost:1/0")

    @app.task
    def plain():
        pass

    @app.task(base=Session)
    def wrapped():
        pass

    @app.task(base=Recording)
    def hooked():
        pass

    assert not Hooks(plain).any and Hooks(plain).run("id", (), {}) is None
    assert Hooks(wrapped).any and Hooks(wrapped).call is wrapped and Hooks(wrapped).on_success is None
    h = Hooks(hooked)
    assert h.call is None and all(getattr(h, n) is not None for n in
                                  ("before_start", "on_success", "on_failure", "on_retry", "after_return"))


def test_eager_success_calls_hooks_in_celerys_order(app):
    @app.task(base=Recording)
    def add(x, y):
        calls.append(("body",))
        return x + y

    result = add.apply((1, 2), task_id="t1")
    assert result.get() == 3
    assert calls == [("before_start", "t1", (1, 2), {}), ("body",), ("on_success", 3, "t1", (1, 2), {}),
                     ("after_return", "SUCCESS", 3, "t1", (1, 2), {}, None)]


def test_eager_failure_calls_on_failure_with_einfo_then_after_return(app):
    @app.task(base=Recording)
    def boom(x):
        raise ValueError(f"bad {x}")

    result = boom.apply((5,), task_id="t2")
    assert result.state == "FAILURE"
    names = [c[0] for c in calls]
    assert names == ["before_start", "on_failure", "after_return"]
    _, exc, task_id, args, kwargs, einfo = calls[1]
    assert isinstance(exc, ValueError) and task_id == "t2" and args == (5,) and kwargs == {}
    assert isinstance(einfo, ExceptionInfo) and einfo.exception is exc and einfo.type is ValueError
    assert einfo.tb is exc.__traceback__ and "ValueError: bad 5" in einfo.traceback and "boom" in einfo.traceback
    assert calls[2][1:3] == ("FAILURE", exc) and calls[2][6] is einfo


def test_eager_autoretry_is_on_retry_then_on_failure_past_max_retries(app):
    @app.task(base=Recording, autoretry_for=(KeyError,), max_retries=2, retry_backoff=False,
              default_retry_delay=0)
    def flaky():
        raise KeyError("k")

    assert flaky.apply(task_id="t3").state == "FAILURE"
    names = [c[0] for c in calls]
    assert names == ["before_start", "on_retry", "before_start", "on_retry", "before_start", "on_failure",
                     "after_return"]
    on_retry = calls[1]
    assert isinstance(on_retry[1], KeyError) and on_retry[2] == "t3" and isinstance(on_retry[5], ExceptionInfo)


def test_eager_propagating_failure_skips_on_failure_as_celery(app):
    @app.task(base=Recording)
    def boom():
        raise ValueError("x")

    with pytest.raises(ValueError):
        boom.apply(throw=True)
    assert [c[0] for c in calls] == ["before_start"]


def test_a_raising_hook_is_logged_and_the_outcome_stands(app, caplog):
    @app.task(base=Raising)
    def fine():
        return "ok"

    assert fine.apply().get() == "ok"
    logged = caplog.text
    assert "before_start hook raised" in logged and "on_success hook raised" in logged
    assert "after_return hook raised" in logged


def test_an_overridden_call_is_what_runs(app):
    @app.task(base=Session, bind=True)
    def body(self, x):
        calls.append(("body", self.request.id, x))
        return x

    assert body.apply((7,), task_id="t4").get() == 7
    assert calls == [("enter", "t4"), ("body", "t4", 7), ("exit",)]


def test_eager_task_signals_with_celerys_arguments(app, received):
    @app.task
    def add(x, y):
        return x + y

    @app.task
    def boom():
        raise ValueError("no")

    add.apply((1, 2), task_id="s1")
    assert [(name, sender) for name, sender, _ in received] == [("task_prerun", add), ("task_success", add),
                                                                ("task_postrun", add)]
    assert received[0][2] == {"task_id": "s1", "task": add, "args": (1, 2), "kwargs": {}}
    assert received[1][2] == {"result": 3}
    assert received[2][2] == {"task_id": "s1", "task": add, "args": (1, 2), "kwargs": {}, "retval": 3,
                              "state": "SUCCESS"}
    received.clear()
    boom.apply(task_id="s2")
    assert [name for name, _, _ in received] == ["task_prerun", "task_failure", "task_postrun"]
    failure = received[1][2]
    assert set(failure) == {"task_id", "exception", "args", "kwargs", "traceback", "einfo"}
    assert failure["task_id"] == "s2" and isinstance(failure["exception"], ValueError)
    assert failure["traceback"] is failure["exception"].__traceback__
    assert received[2][2]["state"] == "FAILURE"


def test_eager_retry_signal(app, received):
    @app.task(bind=True, max_retries=1)
    def again(self):
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return self.request.retries

    assert again.apply(task_id="s3").get() == 1
    names = [name for name, _, _ in received]
    assert names == ["task_prerun", "task_retry", "task_postrun", "task_prerun", "task_success", "task_postrun"]
    retry = received[1][2]
    assert retry["request"].id == "s3" and type(retry["reason"]).__name__ == "Retry"
    assert isinstance(retry["einfo"], ExceptionInfo) and received[2][2]["state"] == "RETRY"


def test_async_def_tasks_run_eagerly_with_their_hooks_and_async_generators_are_refused(app):
    """(Until the asyncio work an async def was refused; now its coroutine runs on the thread's loop,
    minique/loop.py, eagerly as in a worker: tests/test_async_tasks.py.)"""
    seen = []

    class Hooked(Task):
        def on_success(self, retval, task_id, args, kwargs):
            seen.append(retval)

    @app.task(base=Hooked)
    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    assert double.is_async and double.apply((21,)).get() == 42 and seen == [42]

    async def agen():
        yield 1

    with pytest.raises(ConfigurationError, match="async generator"):
        app.task(name="g")(agen)
    assert "g" not in app.tasks


def test_request_headers_are_attributes_too():
    req = Request(id="1", headers={"traceparent": "00-abc", "tenant": 3})
    assert req.headers["traceparent"] == "00-abc" and req.traceparent == "00-abc" and req.tenant == 3
    with pytest.raises(AttributeError):
        _ = req.nothing
    assert getattr(Request(id="2"), "traceparent", None) is None
    import copy
    assert copy.copy(req).tenant == 3


def test_headers_a_publish_receiver_adds_are_kept_and_signed():
    from minique.signing import verify
    app = Minique("t", broker="redis://localhost:1/0", security_key="k" * 32)

    def add_header(headers=None, **kwargs):
        headers["traceparent"] = "00-" + headers["id"]
        headers["retries"] = 99  # a field of the message itself: not a header, not taken

    signals.before_task_publish.connect(add_header, weak=False)
    try:
        msg = app.build_message("t.x", (1,), None, {"headers": {"tenant": "a"}, "task_id": "m1"})
        changed, headers = app._before_publish(msg)
    finally:
        signals.before_task_publish.disconnect(add_header)
    assert changed.headers == {"tenant": "a", "traceparent": "00-m1"} and changed.retries == 0
    assert headers["task"] == "t.x" and headers["traceparent"] == "00-m1"
    assert verify(changed, "k" * 32) and not verify(msg._replace(headers=changed.headers), "k" * 32)
