"""The running task's request (`self.request`), per thread (per asyncio task in the asyncio pool), the
current app, and the apps that exist (for `shared_task`: what registers in every app when it is
finalized, and `app.on_after_fork`)."""
from __future__ import annotations

import contextvars
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Union, cast

if TYPE_CHECKING:
    from .message import Message

_local = threading.local()
# the request stack: a context variable, so that each asyncio task of the asyncio pool has its own
# (fresh_stack); a thread's context starts empty, so each thread has its own too
_requests: "contextvars.ContextVar[Optional[List[Any]]]" = contextvars.ContextVar("minique_requests", default=None)
_current_app: Any = None
_apps: "weakref.WeakSet[Any]" = weakref.WeakSet()   # every app created (Celery's _state._apps)
_on_app_finalizers: List[Callable[[Any], Any]] = []  # called with each app when it is finalized


class Request:
    """What a bound task sees as `self.request` (Celery's names)."""

    __slots__ = ("id", "task", "args", "kwargs", "retries", "root_id", "parent_id", "group", "group_index",
                 "hostname", "delivery_info", "eta", "expires", "headers", "chord", "chain", "is_eager",
                 "callbacks", "errbacks", "called_directly", "message", "ignore_result", "time_limit",
                 "soft_time_limit", "delivery_count", "children")

    # Every slot is set by __init__ (None when not given); the types are those of the message fields.
    id: Optional[str]
    task: Optional[str]
    args: Optional[Sequence[Any]]
    kwargs: Optional[Dict[str, Any]]
    retries: int
    root_id: Optional[str]
    parent_id: Optional[str]
    group: Optional[str]
    group_index: Optional[int]
    hostname: Optional[str]
    delivery_info: Optional[Dict[str, Any]]
    eta: Optional[float]
    expires: Optional[float]
    headers: Optional[Dict[str, Any]]
    chord: Optional[Dict[str, Any]]
    chain: Optional[List[Dict[str, Any]]]
    is_eager: Optional[bool]
    callbacks: Optional[List[Dict[str, Any]]]
    errbacks: Optional[List[Dict[str, Any]]]
    called_directly: bool
    message: Optional[Message]
    ignore_result: Optional[bool]
    time_limit: Optional[float]
    soft_time_limit: Optional[float]
    delivery_count: Optional[int]
    children: Optional[List[Any]]  # what the task sent so far (add_child), None: nothing

    def __init__(self, **fields: Any):
        for name in self.__slots__:
            setattr(self, name, fields.get(name))
        if self.retries is None:
            self.retries = 0
        if self.called_directly is None:
            self.called_directly = False

    def __getattr__(self, name: str) -> Any:
        """A message header is also an attribute (as in Celery: `self.request.traceparent`)."""
        if not name.startswith("__"):
            try:
                headers = object.__getattribute__(self, "headers")
            except AttributeError:
                headers = None
            if headers and name in headers:
                return headers[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def as_dict(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "message"}

    def __repr__(self) -> str:
        return f"<Request {self.task}[{self.id}] retries={self.retries}>"


def _stack() -> List[Any]:
    stack = _requests.get()
    if stack is None:
        stack = []
        _requests.set(stack)
    return stack


def fresh_stack() -> None:
    """Give the running asyncio task a request stack of its own (its context is a copy of the one it was
    created in, which shares the creator's stack)."""
    _requests.set([])


def push(request: Union[Request, Callable[[], Request]]) -> None:
    """Make `request` current; a callable is called only if someone asks (most tasks never do)."""
    _stack().append(request)


def pop() -> Any:
    """Take the current request off; returns it (a Request, or the callable that was never asked for)."""
    return _stack().pop()


def add_child(request: Request, task_id: str, group_id: Optional[str]) -> None:
    """Note a task `request`'s task sent (app.build_message): stored with its result, read back as
    AsyncResult.children. Members of one group (or chord header) sent together are one entry
    [group_id, [ids]] (a GroupResult), as Celery records a group; a lone task is its id."""
    children = request.children
    if children is None:
        children = request.children = []
    if group_id is not None:
        last = children[-1] if children else None
        if last is not None and last.__class__ is list and last[0] == group_id:
            last[1].append(task_id)
            return
        children.append([group_id, [task_id]])
    else:
        children.append(task_id)


def set_result_writer(writer: Optional[Callable[[Callable[[Any], None]], None]]) -> None:
    """Where update_state writes in this thread: a worker's pool thread sets its Outbox's write_now
    (its connection is idle while a body runs, and writing there keeps the order of its writes)."""
    _local.writer = writer


def result_writer() -> Optional[Callable[[Callable[[Any], None]], None]]:
    return getattr(_local, "writer", None)


def current() -> Optional[Request]:
    """The request of the task running in this thread (None outside tasks or when called directly)."""
    stack = _stack()
    if not stack:
        return None
    top = stack[-1]
    if top.__class__ is not Request:
        top = stack[-1] = top()
    return cast("Request | None", top)


def set_current_app(app: Any) -> None:
    global _current_app
    _current_app = app


def current_app() -> Any:
    """The app created last; used where Celery users write AsyncResult(id) without an app."""
    if _current_app is None:
        from .exceptions import ConfigurationError
        raise ConfigurationError("no minique app exists yet: create Minique(...) first or pass app=")
    return _current_app


def register_app(app: Any) -> None:
    _apps.add(app)


def apps() -> List[Any]:
    """The apps that exist now."""
    return list(_apps)


def connect_on_app_finalize(callback: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Call `callback(app)` for every app when it is finalized, also apps created later (shared tasks)."""
    _on_app_finalizers.append(callback)
    return callback


def announce_app_finalized(app: Any) -> None:
    for callback in list(_on_app_finalizers):
        callback(app)


def _after_fork_in_child() -> None:
    for app in list(_apps):
        signal = getattr(app, "on_after_fork", None)
        if signal is not None and signal.receivers:
            signal.send(sender=app)


os.register_at_fork(after_in_child=_after_fork_in_child)
