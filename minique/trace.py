"""A task's hooks and the task signals around one run of it, as Celery calls them (celery/app/trace.py).

Shared by the worker (worker/execute.py, which calls them where `settle()` decided the outcome)
and eager mode (`Task.apply`). The order, Celery's:

    task_prerun → before_start → the body (the task's own `__call__` if its class overrides it)
    → on_success + task_success | on_retry + task_retry | on_failure + task_failure
    → after_return (SUCCESS and FAILURE only) → task_postrun

Cost: `Hooks.of(task)` says once per task which hooks its class overrides; a run is traced (a `Run`
made) only when it does or when one of the task signals has a receiver (`traced`). A plain task with
nothing connected takes none of this. A hook that raises is logged and changes nothing: the
outcome was decided before it ran (before_start included: the body runs anyway).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from . import context, states
from .exceptions import ExceptionInfo, Retry
from .signals import task_failure, task_internal_error, task_postrun, task_prerun, task_retry, task_success

log = logging.getLogger("minique.task")
HOOKS = ("before_start", "on_success", "on_failure", "on_retry", "after_return")
_AFTER_RETURN = frozenset({states.SUCCESS, states.FAILURE})  # Celery: not after RETRY, REJECTED, IGNORED


def _own(cls: type, name: str) -> bool:
    """Whether `cls` (a Task subclass) defines `name` itself rather than keeping Task's no-op."""
    return not getattr(getattr(cls, name, None), "_minique_default", False)


def traced() -> bool:
    """Whether any task signal of a run has a receiver (read per message: receivers may come later)."""
    return bool(task_prerun.receivers or task_postrun.receivers or task_success.receivers
                or task_failure.receivers or task_retry.receivers or task_internal_error.receivers)


class Hooks:
    """A task's own hooks (None where its class keeps Task's no-op), found once per task."""

    __slots__ = ("task", "before_start", "on_success", "on_failure", "on_retry", "after_return", "call", "any")

    def __init__(self, task: Any):
        cls = type(task)
        self.task = task
        self.before_start = task.before_start if _own(cls, "before_start") else None
        self.on_success = task.on_success if _own(cls, "on_success") else None
        self.on_failure = task.on_failure if _own(cls, "on_failure") else None
        self.on_retry = task.on_retry if _own(cls, "on_retry") else None
        self.after_return = task.after_return if _own(cls, "after_return") else None
        # Celery calls the task object when its class overrides __call__ (a DB session around the body...)
        self.call = task if _own(cls, "__call__") else None
        self.any = any(getattr(self, name) is not None for name in HOOKS + ("call",))

    def run(self, task_id: str, args: Any, kwargs: Dict[str, Any]) -> Optional["Run"]:
        """A Run for one execution, or None when there is nothing to call (the plain, fast path)."""
        if self.any or traced():
            return Run(self, task_id, args, kwargs)
        return None


class Run:
    """One traced execution: calls the hooks and sends the task signals, each at its point."""

    __slots__ = ("hooks", "task", "task_id", "args", "kwargs", "state", "retval", "einfo")

    def __init__(self, hooks: Hooks, task_id: str, args: Any, kwargs: Dict[str, Any]):
        self.hooks = hooks
        self.task = hooks.task
        self.task_id = task_id
        self.args = args
        self.kwargs = kwargs
        self.state: Optional[str] = None
        self.retval: Any = None
        self.einfo: Optional[ExceptionInfo] = None

    def _hook(self, name: str, fun: Any, *args: Any) -> None:
        try:
            fun(*args)
        except Exception as exc:  # noqa: BLE001 - a hook never changes the task's outcome
            log.exception("Task %s[%s]: its %s hook raised %r (ignored: the outcome stands)",
                          self.task.name, self.task_id, name, exc)

    def body(self) -> Any:
        """task_prerun, before_start, then the body; what the body returns or raises."""
        task, args, kwargs = self.task, self.args, self.kwargs
        if task_prerun.receivers:
            task_prerun.send(sender=task, task_id=self.task_id, task=task, args=args, kwargs=kwargs)
        if self.hooks.before_start is not None:
            self._hook("before_start", self.hooks.before_start, self.task_id, args, kwargs)
        if self.hooks.call is not None:
            return task(*args, **kwargs)
        return task.run(task, *args, **kwargs) if task.bind else task.run(*args, **kwargs)

    def succeeded(self, value: Any) -> None:
        self.state, self.retval = states.SUCCESS, value
        if self.hooks.on_success is not None:
            self._hook("on_success", self.hooks.on_success, value, self.task_id, self.args, self.kwargs)
        if task_success.receivers:
            task_success.send(sender=self.task, result=value)

    def retried(self, reason: Retry) -> None:
        """Settled as a retry (self.retry(), or autoretry_for): on_retry gets the exception that caused it."""
        self.state, self.retval = states.RETRY, reason
        if self.hooks.on_retry is None and not task_retry.receivers:
            return
        cause = reason.exc
        if reason.__traceback__ is None and cause is not None:  # an autoretry: the cause's traceback
            reason = reason.with_traceback(cause.__traceback__)
        einfo = ExceptionInfo(reason)
        if self.hooks.on_retry is not None:
            self._hook("on_retry", self.hooks.on_retry, cause, self.task_id, self.args, self.kwargs, einfo)
        if task_retry.receivers:
            task_retry.send(sender=self.task, request=context.current(), reason=reason, einfo=einfo)

    def failed(self, exc: BaseException) -> None:
        """Settled as a failure (the exception, or an autoretry past max_retries)."""
        self.state, self.retval = states.FAILURE, exc
        if self.hooks.on_failure is None and not task_failure.receivers and self.hooks.after_return is None:
            return
        einfo = self.einfo = ExceptionInfo(exc)
        if self.hooks.on_failure is not None:
            self._hook("on_failure", self.hooks.on_failure, exc, self.task_id, self.args, self.kwargs, einfo)
        if task_failure.receivers:
            task_failure.send(sender=self.task, task_id=self.task_id, exception=exc, args=self.args,
                              kwargs=self.kwargs, traceback=exc.__traceback__, einfo=einfo)

    def ended(self, state: str, value: Any) -> None:
        """Settled without a hook of its own (rejected, ignored, replaced)."""
        self.state, self.retval = state, value

    def internal_error(self, exc: BaseException) -> None:
        """minique failed settling this run (its result or follow-ups would not write)."""
        self.state, self.retval = states.FAILURE, exc
        send_internal_error(self.task, self.task_id, self.args, self.kwargs, context.current(), exc)

    def finish(self) -> None:
        """after_return (SUCCESS, FAILURE), then task_postrun; the request is still current."""
        state = self.state
        if self.hooks.after_return is not None and state in _AFTER_RETURN:
            self._hook("after_return", self.hooks.after_return, state, self.retval, self.task_id, self.args,
                       self.kwargs, self.einfo)
        if task_postrun.receivers:
            task_postrun.send(sender=self.task, task_id=self.task_id, task=self.task, args=self.args,
                              kwargs=self.kwargs, retval=self.retval, state=state)


def send_internal_error(task: Any, task_id: Optional[str], args: Any, kwargs: Any, request: Any,
                        exc: BaseException) -> None:
    if task_internal_error.receivers:
        task_internal_error.send(sender=task, task_id=task_id, args=args, kwargs=kwargs, request=request,
                                 exception=exc, traceback=exc.__traceback__, einfo=ExceptionInfo(exc, internal=True))
