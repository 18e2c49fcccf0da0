"""The app of tests/test_hooks_worker.py: task hooks and signal receivers that write what they saw
(one JSON object per call, pushed to the Redis list `hooks:log`) for the test to read.

HOOKSAPP_SETUP_LOGGING=1 connects a setup_logging receiver (minique then configures no logging).
"""
import json
import os

from bookkeeping import store_for

from minique import Minique, Task, signals

app = Minique("hooksapp", include=["hooksapp"])
app.conf.update(json.loads(os.environ.get("TESTAPP_SETTINGS") or "{}"))
LOG = "hooks:log"
store = store_for(app)


def note(kind, **fields):
    store().rpush(LOG, json.dumps({"kind": kind, "pid": os.getpid(), **fields}, default=repr))


# --- hooks ----------------------------------------------------------------------------------------

class Hooked(Task):
    def before_start(self, task_id, args, kwargs):
        note("before_start", task_id=task_id, args=list(args), kwargs=kwargs, request_id=self.request.id)

    def on_success(self, retval, task_id, args, kwargs):
        note("on_success", task_id=task_id, retval=retval, args=list(args), kwargs=kwargs)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        note("on_failure", task_id=task_id, exc=repr(exc), args=list(args), kwargs=kwargs,
             einfo=[einfo.type.__name__, einfo.exception is exc, "Traceback" in einfo.traceback],
             request_id=self.request.id, retries=self.request.retries)

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        note("on_retry", task_id=task_id, exc=repr(exc), args=list(args), kwargs=kwargs,
             einfo=type(einfo).__name__, retries=self.request.retries)

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        note("after_return", task_id=task_id, status=status, retval=repr(retval),
             einfo=None if einfo is None else einfo.type.__name__)


class Broken(Task):
    """Every hook raises: the outcome must not change."""

    def before_start(self, task_id, args, kwargs):
        raise RuntimeError("before_start broke")

    def on_success(self, retval, task_id, args, kwargs):
        note("broken_on_success", task_id=task_id)
        raise RuntimeError("on_success broke")

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        note("broken_on_failure", task_id=task_id)
        raise RuntimeError("on_failure broke")

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        raise RuntimeError("after_return broke")


class Session(Task):
    """Celery's pattern: __call__ around the body (a DB session per task)."""

    def __call__(self, *args, **kwargs):
        note("call_enter", task_id=self.request.id)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            note("call_exit", task_id=self.request.id)


@app.task(base=Hooked)
def double(x, y=0):
    return x * 2 + y


@app.task(base=Hooked)
def fail(x):
    raise ValueError(f"failed {x}")


@app.task(base=Hooked, autoretry_for=(KeyError,), max_retries=1, default_retry_delay=0, retry_jitter=False)
def flaky():
    raise KeyError("flaky")


@app.task(base=Broken)
def broken_ok():
    return "ok"


@app.task(base=Broken)
def broken_fail():
    raise ValueError("still a failure")


@app.task(base=Session, bind=True)
def in_session(self, x):
    note("body", task_id=self.request.id)
    return x


@app.task(bind=True)
def headers_seen(self):
    """What the worker sees of the headers a before_task_publish receiver added."""
    return [dict(self.request.headers or {}), getattr(self.request, "traceparent", None)]


@app.task
def plain(x):
    return x


@app.task(base=Hooked, bind=True, time_limit=1.0)
def stuck(self):
    """Notes that it started, then outlives its hard time limit (or waits to be terminated)."""
    import time
    note("stuck_started", task_id=self.request.id)
    time.sleep(60)


# --- signals --------------------------------------------------------------------------------------

def _name(sender):
    return getattr(sender, "name", None) if not isinstance(sender, str) else sender


@signals.task_received.connect
def on_received(sender=None, request=None, **kw):
    note("task_received", sender=type(sender).__name__, task_id=request.id, task=request.task, args=request.args)


@signals.task_prerun.connect
def on_prerun(sender=None, task_id=None, task=None, args=None, kwargs=None, **kw):
    note("task_prerun", sender=_name(sender), task_id=task_id, task=task.name, args=list(args), kwargs=kwargs)


@signals.task_postrun.connect
def on_postrun(sender=None, task_id=None, task=None, args=None, kwargs=None, retval=None, state=None, **kw):
    note("task_postrun", sender=_name(sender), task_id=task_id, task=task.name, args=list(args), kwargs=kwargs,
         retval=repr(retval), state=state)


@signals.task_success.connect
def on_success(sender=None, result=None, **kw):
    note("task_success", sender=_name(sender), result=result, task_id=sender.request.id)


@signals.task_failure.connect
def on_failure(sender=None, task_id=None, exception=None, args=None, kwargs=None, traceback=None, einfo=None, **kw):
    note("task_failure", sender=_name(sender), task_id=task_id, exception=repr(exception), args=list(args or ()),
         kwargs=kwargs, traceback=traceback is not None, einfo=einfo.type.__name__)


@signals.task_retry.connect
def on_retry(sender=None, request=None, reason=None, einfo=None, **kw):
    note("task_retry", sender=_name(sender), task_id=request.id, reason=type(reason).__name__,
         cause=repr(reason.exc), einfo=type(einfo).__name__)


@signals.task_revoked.connect
def on_revoked(sender=None, request=None, terminated=None, signum=None, expired=None, **kw):
    note("task_revoked", sender=_name(sender), task_id=request.id, terminated=terminated, expired=expired)


@signals.task_unknown.connect
def on_unknown(sender=None, message=None, exc=None, name=None, id=None, **kw):
    note("task_unknown", sender=type(sender).__name__, name=name, task_id=id, exc=type(exc).__name__,
         message=type(message).__name__)


@signals.task_rejected.connect
def on_rejected(sender=None, message=None, exc=None, **kw):
    note("task_rejected", sender=type(sender).__name__, exc=type(exc).__name__, message=type(message).__name__)


# --- the worker program ---------------------------------------------------------------------------

@signals.celeryd_init.connect
def on_celeryd_init(sender=None, instance=None, conf=None, options=None, **kw):
    note("celeryd_init", sender=sender, instance=type(instance).__name__, broker=conf.broker_url is not None,
         concurrency=options.get("concurrency"))


@signals.worker_init.connect
def on_worker_init(sender=None, **kw):
    note("worker_init", sender=type(sender).__name__)


@signals.import_modules.connect
def on_import_modules(sender=None, **kw):
    note("import_modules", sender=repr(sender))


@signals.celeryd_after_setup.connect
def on_after_setup(sender=None, instance=None, conf=None, **kw):
    note("celeryd_after_setup", sender=sender)


@signals.worker_process_init.connect
def on_process_init(sender=None, **kw):
    note("worker_process_init", sender=sender, parent=os.getppid())


@signals.worker_process_shutdown.connect
def on_process_shutdown(sender=None, pid=None, exitcode=None, **kw):
    note("worker_process_shutdown", sender=sender, child=pid, exitcode=exitcode)


@signals.worker_ready.connect
def on_ready(sender=None, **kw):
    note("worker_ready", sender=type(sender).__name__)


@signals.worker_shutting_down.connect
def on_shutting_down(sender=None, sig=None, how=None, exitcode=None, **kw):
    note("worker_shutting_down", sender=sender, sig=sig, how=how, exitcode=exitcode)


@signals.worker_shutdown.connect
def on_shutdown(sender=None, **kw):
    note("worker_shutdown", sender=type(sender).__name__)


@signals.beat_init.connect
def on_beat_init(sender=None, **kw):
    note("beat_init", sender=type(sender).__name__)


# --- logging --------------------------------------------------------------------------------------

if os.environ.get("HOOKSAPP_SETUP_LOGGING"):
    @signals.setup_logging.connect
    def on_setup_logging(loglevel=None, logfile=None, format=None, colorize=None, **kw):
        import logging
        note("setup_logging", loglevel=loglevel, root_handlers=len(logging.getLogger().handlers))
        return True


@signals.after_setup_logger.connect
def on_after_setup_logger(logger=None, loglevel=None, **kw):
    note("after_setup_logger", logger=logger.name, loglevel=loglevel, handlers=len(logger.handlers))


@signals.after_setup_task_logger.connect
def on_after_setup_task_logger(logger=None, loglevel=None, **kw):
    note("after_setup_task_logger", logger=logger.name, loglevel=loglevel)
