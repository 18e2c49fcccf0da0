"""A task: the user's function plus its options, and the ways to call it (Celery's API)."""
from __future__ import annotations

import inspect
import time
from typing import Any, Callable, Dict, Generic, Iterable, List, Optional, ParamSpec, Tuple, Type, TypeVar, Union, cast

from . import context, loop, retry as retry_engine, states
from .backend import format_traceback
from .canvas import Replace, Signature, chunks, xmap, xstarmap
from .exceptions import Ignore, MaxRetriesExceededError, Reject, Retry
from .message import new_id
from .pipe import ClientPipe
from .result import AsyncResult, EagerResult
from .trace import Hooks

# Task[P, R]: P is the task's parameters (without the bound `self` of a bind=True task), R what it returns.
# Only type checkers read them: at run time Task is a plain class (Generic adds no per-call cost).
P = ParamSpec("P")
R = TypeVar("R")

# Task options with Celery's names; None means "use the app's setting".
OPTION_DEFAULTS: Dict[str, Any] = {
    "queue": None, "priority": None, "ignore_result": None, "serializer": None,
    "max_retries": retry_engine.DEFAULT_MAX_RETRIES, "default_retry_delay": retry_engine.DEFAULT_RETRY_DELAY,
    "retry_backoff": False, "retry_backoff_max": retry_engine.DEFAULT_BACKOFF_MAX, "retry_jitter": True,
    "autoretry_for": (), "retry_kwargs": None, "acks_late": None, "reject_on_worker_lost": None,
    "time_limit": None, "soft_time_limit": None, "expires": None, "rate_limit": None,
    "track_started": None, "store_errors_even_if_ignored": None, "typing": True, "routing_key": None,
    "rate_limit_key": None, "unique": False, "unique_for": None, "unique_until": None,
    "concurrency_limit": None, "concurrency_key": None,
}


_F = TypeVar("_F", bound=Callable[..., Any])


def _default(fun: _F) -> _F:
    """Marks Task's own no-op hooks (and __call__): a subclass that keeps them is not traced (minique/trace.py)."""
    fun._minique_default = True  # type: ignore[attr-defined]
    return fun


class Task(Generic[P, R]):
    """Wraps a function registered with `@app.task`. A plain object: read it, call it, send it.

    For type checkers a task is `Task[P, R]`: `add.delay(1, 2)` is checked against `add`'s parameters and
    gives an `AsyncResult[int]`, whose `get()` is an `int` (see tests/typing/check_tasks.py)."""

    # The options of OPTION_DEFAULTS, set by __init__ (None: the app's setting applies).
    queue: Optional[str]
    priority: Optional[int]
    ignore_result: Optional[bool]
    serializer: Optional[str]
    max_retries: Optional[int]
    default_retry_delay: float
    retry_backoff: Union[bool, float]
    retry_backoff_max: float
    retry_jitter: bool
    autoretry_for: Tuple[Type[BaseException], ...]
    retry_kwargs: Optional[Dict[str, Any]]
    acks_late: Optional[bool]
    reject_on_worker_lost: Optional[bool]
    time_limit: Optional[float]
    soft_time_limit: Optional[float]
    expires: Any  # seconds from now, or a datetime
    rate_limit: Any  # "10/s", "100/m", ... or a number of tasks per second
    rate_limit_key: Optional[Callable[[Any, Any], Any]]  # (args, kwargs) -> the key a cluster limit counts per
    concurrency_limit: Optional[int]  # at most this many runs at once, across workers (worker/concurrency.py)
    concurrency_key: Optional[Callable[[Any, Any], Any]]  # (args, kwargs) -> the key the limit counts per
    unique: bool                  # a second send while one waits or runs gives the first's result (unique.py)
    unique_for: Optional[float]   # seconds a unique key holds at most
    unique_until: Optional[str]   # "finished" (default) or "started": when the key is released
    track_started: Optional[bool]
    store_errors_even_if_ignored: Optional[bool]
    typing: bool
    routing_key: Optional[str]

    def __init__(self, app: Any, fun: Callable[..., R], name: str, bind: bool = False, **options: Any):
        unknown = set(options) - set(OPTION_DEFAULTS) - {"shared", "trail", "lazy"}
        if unknown:
            from .exceptions import ConfigurationError
            raise ConfigurationError(f"unknown task option(s) {sorted(unknown)} for task {name!r}")
        self.app = app
        self.run = fun
        self.name = name
        self.bind = bind
        self.__doc__ = fun.__doc__
        self.__name__ = getattr(fun, "__name__", name)
        module = getattr(fun, "__module__", None)
        if module is not None:
            self.__module__ = module
        self.__wrapped__ = fun
        self.is_async = inspect.iscoroutinefunction(fun)  # its body runs on the process's loop (minique/loop.py)
        cls = type(self)  # a base class's attributes (Celery's task classes) are its tasks' defaults
        for key, default in OPTION_DEFAULTS.items():
            setattr(self, key, options[key] if key in options else getattr(cls, key, default))
        if self.queue is not None:  # refused here, where it is given, rather than at the first send
            from .keys import check_queue
            check_queue(self.queue, f"the queue option of task {name!r}")
        autoretry_for = self.autoretry_for  # one exception class, or a tuple/list of them
        self.autoretry_for = (autoretry_for,) if isinstance(autoretry_for, type) else tuple(autoretry_for or ())
        self.policy = retry_engine.RetryPolicy(
            max_retries=self.max_retries, default_retry_delay=self.default_retry_delay,
            retry_backoff=self.retry_backoff, retry_backoff_max=self.retry_backoff_max,
            retry_jitter=self.retry_jitter)

    # --- hooks (Celery's): override them in a task class (`base=`); called by the worker and in eager
    # mode, in Celery's order (minique/trace.py). One that raises is logged; the outcome stands.
    @_default
    def before_start(self, task_id: str, args: Any, kwargs: Dict[str, Any]) -> None:
        """Called before the body runs."""

    @_default
    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Dict[str, Any]) -> None:
        """Called when the task succeeded (its result is written or queued)."""

    @_default
    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Dict[str, Any], einfo: Any) -> None:
        """Called when the task failed for good (also an autoretry past max_retries); einfo: ExceptionInfo."""

    @_default
    def on_retry(self, exc: Optional[BaseException], task_id: str, args: Any, kwargs: Dict[str, Any],
                 einfo: Any) -> None:
        """Called when the task is to be retried (self.retry() or autoretry_for); exc: the cause."""

    @_default
    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Dict[str, Any],
                     einfo: Any) -> None:
        """Called after on_success / on_failure (not after a retry, reject or ignore), as in Celery."""

    # --- calling in-process -------------------------------------------------------------------------
    @_default
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.bind:
            return self.run(self, *args, **kwargs)
        return self.run(*args, **kwargs)

    @property
    def request(self) -> context.Request:
        req = context.current()
        if req is None or req.task != self.name:
            return context.Request(task=self.name, called_directly=True, args=(), kwargs={})
        return req

    def apply(self, args: Iterable[Any] = (), kwargs: Optional[Dict[str, Any]] = None, task_id: Optional[str] = None,
              **options: Any) -> EagerResult[R]:
        """Run the task here and now (eager), retries included; returns an EagerResult."""
        link, link_error = options.pop("link", None), options.pop("link_error", None)
        if link or link_error:  # callbacks run as a worker runs them (canvas.apply_linked)
            from .canvas import apply_linked
            return cast("EagerResult[R]", apply_linked(self, args, kwargs, task_id, link, link_error, options))
        task_id = task_id or new_id()
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        hooks = Hooks(self)
        retries = 0
        while True:
            req = context.Request(id=task_id, task=self.name, args=args, kwargs=kwargs, retries=retries,
                                  root_id=task_id, is_eager=True, hostname="eager", delivery_info={},
                                  headers=options.get("headers"))
            context.push(req)
            run = hooks.run(task_id, args, kwargs)  # None: no hooks, no task signal connected
            try:
                value = self(*args, **kwargs) if run is None else run.body()
                if self.is_async:
                    value = loop.run(cast(Any, value))
                if run is not None:
                    run.succeeded(value)
                return EagerResult(task_id, value, states.SUCCESS, app=self.app)
            except Retry as exc:
                if run is not None:
                    run.retried(exc)
                retries += 1
                continue
            except Exception as exc:
                if self.autoretry_for and isinstance(exc, self.autoretry_for) and \
                        retry_engine.can_retry(self.policy, retries):
                    if run is not None:
                        run.retried(Retry(exc=exc))
                    retries += 1
                    continue
                if options.get("throw") or self.app.conf.task_eager_propagates:
                    raise  # (as Celery: propagated, so neither on_failure nor task_failure)
                if run is not None:
                    run.failed(exc)
                return EagerResult(task_id, exc, states.FAILURE, format_traceback(exc), app=self.app)
            finally:
                if run is not None:
                    run.finish()
                context.pop()

    # --- sending ------------------------------------------------------------------------------------
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments; returns an AsyncResult."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Optional[Iterable[Any]] = None, kwargs: Optional[Dict[str, Any]] = None,
                    task_id: Optional[str] = None, link: Any = None, link_error: Any = None,
                    **options: Any) -> AsyncResult[R]:
        """Send the task with options: countdown, eta, expires, queue, priority, serializer, headers, ..."""
        if self.app.conf.task_always_eager:
            return self.apply(args or (), kwargs or {}, task_id=task_id, link=link, link_error=link_error, **options)
        if task_id is not None or link is not None or link_error is not None:  # (plain calls skip the options)
            options.update(task_id=task_id, link=link, link_error=link_error)
        return cast("AsyncResult[R]", self.app.send_task(self.name, args, kwargs, **options))

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """`delay` for asyncio code: `await add.adelay(2, 2)` sends without blocking the event loop."""
        return await self.aapply_async(args, kwargs)

    async def aapply_async(self, args: Optional[Iterable[Any]] = None, kwargs: Optional[Dict[str, Any]] = None,
                           task_id: Optional[str] = None, link: Any = None, link_error: Any = None,
                           **options: Any) -> AsyncResult[R]:
        """`apply_async` for asyncio code (the same options; eager mode runs the task here, as there)."""
        if self.app.conf.task_always_eager:
            return self.apply(args or (), kwargs or {}, task_id=task_id, link=link, link_error=link_error, **options)
        if task_id is not None or link is not None or link_error is not None:
            options.update(task_id=task_id, link=link, link_error=link_error)
        return cast("AsyncResult[R]", await self.app.asend_task(self.name, args, kwargs, **options))

    def delay_many(self, arglist: Iterable[Tuple[Any, ...]], **options: Any) -> List[AsyncResult[R]]:
        """Send one task per args tuple in a single pipelined round trip (the bulk path)."""
        sent = self.app.send_many(self.name, ((tuple(a), None) for a in arglist), **options)
        return cast("list[AsyncResult[R]]", sent)

    def AsyncResult(self, task_id: str, **kwargs: Any) -> AsyncResult[R]:
        return AsyncResult(task_id, app=self.app, task_name=self.name, **kwargs)

    # --- canvas -------------------------------------------------------------------------------------
    def signature(self, args: Optional[Iterable[Any]] = None, kwargs: Optional[Dict[str, Any]] = None,
                  **options: Any) -> Signature[R]:
        return Signature(self.name, args, kwargs, options, app=self.app,
                         immutable=options.pop("immutable", False))

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature[R]:
        return self.signature(args, kwargs, immutable=True)

    def map(self, it: Iterable[Any]) -> Any:
        return xmap(self, it)

    def starmap(self, it: Iterable[Any]) -> Any:
        return xstarmap(self, it)

    def chunks(self, it: Iterable[Any], n: int) -> Any:
        return chunks(self, it, n)

    # --- inside a running task ----------------------------------------------------------------------
    def retry(self, args: Any = None, kwargs: Any = None, exc: Optional[BaseException] = None, throw: bool = True,
              eta: Any = None, countdown: Optional[float] = None, max_retries: Optional[int] = None,
              **options: Any) -> Retry:
        """Ask the worker to run this task again later (raises Retry; `raise self.retry(...)` reads well)."""
        req = self.request
        if req.called_directly:
            if exc is not None:
                raise exc
            raise Retry("Task can be retried only when run by a worker", exc)
        if not retry_engine.can_retry(self.policy, req.retries, max_retries, override=max_retries is not None):
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{req.id}] args:{req.args} kwargs:{req.kwargs}")
        if eta is not None and not isinstance(eta, (int, float)):
            from .app import _epoch
            eta = _epoch(eta, time.time(), self.app._naive_tz())
        when = retry_engine.retry_at(time.time(), self.policy, req.retries, countdown, eta)
        signal = Retry(exc=exc, when=when)
        signal.args_override = args
        signal.kwargs_override = kwargs
        if throw:
            raise signal
        return signal

    def update_state(self, task_id: Optional[str] = None, state: Optional[str] = None, meta: Any = None,
                     **kwargs: Any) -> None:
        """Store a state for a task (Celery's): by default the running task's, as a custom state such as
        "PROGRESS" whose `meta` is what `AsyncResult.info` (and `.result`) show while it runs; the
        task's final state replaces it. Inside a worker it is written at once through the pool
        process's own connection (idle while the body runs, and keeping its writes in order); with
        an explicit `task_id` it also works from anywhere else. Nothing is stored for an eager task."""
        req = self.request
        if task_id is None:
            if req.called_directly or req.id is None:
                raise ValueError("update_state() needs a task_id outside a running task")
            task_id = req.id
        if not isinstance(state, str) or not state:
            raise ValueError(f"update_state() needs a state name (a non-empty str), not {state!r}")
        if req.is_eager and task_id == req.id:
            return  # an eager task's result is its EagerResult: nothing is stored for it
        backend = self.app.backend
        extra = None
        if self.app.conf.result_extended and not req.called_directly and task_id == req.id:
            queue = (req.delivery_info or {}).get("queue")
            extra = {"name": req.task, "args": req.args, "kwargs": req.kwargs, "worker": req.hostname,
                     "queue": queue, "retries": req.retries}
        record = backend.encode_meta(task_id, state, meta, serializer=self.serializer, extra=extra)  # EncodeError
        writer = context.result_writer()
        if writer is not None:  # in a worker's pool process or thread
            writer(lambda pipe: backend.write_meta(pipe, task_id, state, record))
        else:
            pipe = ClientPipe(backend.client)
            backend.write_meta(pipe, task_id, state, record)
            pipe.execute()

    def replace(self, sig: Any) -> None:
        """Replace this task with `sig`: its result becomes this task's result."""
        raise Replace(sig)

    def reject(self, reason: Any = None, requeue: bool = False) -> None:
        raise Reject(reason, requeue=requeue)

    def ignore(self) -> None:
        raise Ignore()

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"
