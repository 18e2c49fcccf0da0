"""Signals with Celery's names, senders and keyword arguments (`from minique.signals import task_prerun`).

A receiver is any callable taking keyword arguments: `@task_failure.connect` or
`task_failure.connect(handler, sender=some_task)`. Receivers are held by weak reference unless
`weak=False` (as in Celery: a receiver defined inside a function and not kept alive disappears).
A receiver that raises is logged and never changes what the sender was doing.

Senders test `signal.receivers` (an empty list when nothing is connected) before building any
arguments, so an unused signal costs one attribute read on the hot path.
"""
from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Callable, Hashable, List, Optional, Tuple

log = logging.getLogger("minique.signals")

__all__ = [
    "Signal",
    "before_task_publish", "after_task_publish", "task_received", "task_prerun", "task_postrun",
    "task_success", "task_failure", "task_retry", "task_revoked", "task_rejected", "task_unknown",
    "task_internal_error", "celeryd_init", "celeryd_after_setup", "worker_init", "import_modules",
    "worker_before_create_process", "worker_process_init", "worker_process_shutdown", "worker_ready",
    "worker_shutting_down", "worker_shutdown", "heartbeat_sent", "beat_init", "beat_embedded_init",
    "setup_logging", "after_setup_logger", "after_setup_task_logger",
]


def _key(target: Any) -> Hashable:
    """How a receiver or a sender is recognised: strings by value (task names as senders), bound
    methods by their function, anything else by identity (Celery's rule)."""
    if isinstance(target, (str, bytes)):
        return target
    func = getattr(target, "__func__", None)
    return id(func if func is not None else target)


_ANY = _key(None)


def _accepts_kwargs(fun: Callable[..., Any]) -> bool:
    import inspect
    try:
        params = inspect.signature(fun).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: trust it
        return True
    return any(p.kind is p.VAR_KEYWORD for p in params)


class Signal:
    """A named hook: `connect` receivers, `send` to them; Celery's `Signal` interface."""

    def __init__(self, name: str, providing_args: Any = None):
        self.name = name
        self.providing_args = frozenset(providing_args or ())
        # [((receiver key, sender key), receiver or weak reference to it)]; replaced, never mutated, so
        # `send` iterates a snapshot without taking the lock.
        self.receivers: List[Tuple[Tuple[Hashable, Hashable], Any]] = []
        self._lock = threading.Lock()

    def connect(self, receiver: Optional[Callable[..., Any]] = None, sender: Any = None, weak: bool = True,
                dispatch_uid: Optional[Hashable] = None) -> Any:
        """Connect `receiver` (for `sender` only, if given). As a decorator: `@sig.connect` or
        `@sig.connect(sender=x)`. A receiver must accept `**kwargs`; connecting it twice is a no-op."""
        if receiver is None:
            def decorate(fun: Callable[..., Any]) -> Callable[..., Any]:
                self.connect(fun, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
                return fun
            return decorate
        if not callable(receiver):
            raise TypeError(f"signal receivers must be callable, not {receiver!r}")
        if not _accepts_kwargs(receiver):
            raise ValueError(f"signal receiver {receiver!r} must accept keyword arguments (**kwargs)")
        lookup = (dispatch_uid if dispatch_uid is not None else _key(receiver), _key(sender))
        held: Any = receiver
        if weak:
            owner = getattr(receiver, "__self__", None)
            if owner is not None and getattr(receiver, "__func__", None) is not None:
                held = weakref.WeakMethod(receiver, self._drop_dead)
            else:
                held = weakref.ref(receiver, self._drop_dead)
        with self._lock:
            if all(key != lookup for key, _ in self.receivers):
                self.receivers = self.receivers + [(lookup, held)]
        return receiver

    def disconnect(self, receiver: Optional[Callable[..., Any]] = None, sender: Any = None,
                   dispatch_uid: Optional[Hashable] = None) -> bool:
        """Disconnect a receiver connected with the same sender (or dispatch_uid); True if one was."""
        lookup = (dispatch_uid if dispatch_uid is not None else _key(receiver), _key(sender))
        with self._lock:
            kept = [entry for entry in self.receivers if entry[0] != lookup]
            found = len(kept) != len(self.receivers)
            self.receivers = kept
        return found

    def _drop_dead(self, ref: Any) -> None:
        with self._lock:
            self.receivers = [entry for entry in self.receivers if entry[1] is not ref]

    def has_listeners(self, sender: Any = None) -> bool:
        return bool(self._live(sender))

    def _live(self, sender: Any) -> List[Callable[..., Any]]:
        wanted = _key(sender)
        live = []
        for (_, sender_key), held in self.receivers:
            if sender_key != _ANY and sender_key != wanted:
                continue
            if isinstance(held, weakref.ReferenceType):
                held = held()
                if held is None:
                    continue
            live.append(held)
        return live

    def send(self, sender: Any, **named: Any) -> List[Tuple[Callable[..., Any], Any]]:
        """Call each receiver for `sender` with `signal=self, sender=sender, **named`; returns
        [(receiver, response or the exception it raised)]. A receiver that raises is logged."""
        if not self.receivers:
            return []
        responses: List[Tuple[Callable[..., Any], Any]] = []
        for receiver in self._live(sender):
            try:
                responses.append((receiver, receiver(signal=self, sender=sender, **named)))
            except Exception as exc:  # noqa: BLE001 - a receiver never breaks its sender
                log.exception("Signal handler %r of %s raised: %r", receiver, self.name, exc)
                responses.append((receiver, exc))
        return responses

    send_robust = send  # Django's name; the same in Celery

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"


# --- tasks (sender: the task object, except the publish signals: the task's name) ---------------
#: Before a message is published; `body`, `routing_key` (the queue), `headers` may be changed in place.
before_task_publish = Signal("before_task_publish", {"body", "exchange", "routing_key", "headers", "properties",
                                                     "declare", "retry_policy"})
#: After a message is published.
after_task_publish = Signal("after_task_publish", {"body", "exchange", "routing_key", "headers"})
#: A worker received a message it will run (sender: the consumer; `request`).
task_received = Signal("task_received", {"request"})
task_prerun = Signal("task_prerun", {"task_id", "task", "args", "kwargs"})
task_postrun = Signal("task_postrun", {"task_id", "task", "args", "kwargs", "retval", "state"})
task_success = Signal("task_success", {"result"})
task_failure = Signal("task_failure", {"task_id", "exception", "args", "kwargs", "traceback", "einfo"})
task_retry = Signal("task_retry", {"request", "reason", "einfo"})
task_revoked = Signal("task_revoked", {"request", "terminated", "signum", "expired"})
task_rejected = Signal("task_rejected", {"message", "exc"})
task_unknown = Signal("task_unknown", {"message", "exc", "name", "id"})
task_internal_error = Signal("task_internal_error", {"task_id", "args", "kwargs", "request", "exception",
                                                     "traceback", "einfo"})

# --- the worker program -------------------------------------------------------------------------
celeryd_init = Signal("celeryd_init", {"instance", "conf", "options"})
celeryd_after_setup = Signal("celeryd_after_setup", {"instance", "conf"})
import_modules = Signal("import_modules")
worker_init = Signal("worker_init")
worker_before_create_process = Signal("worker_before_create_process")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown", {"pid", "exitcode"})
worker_ready = Signal("worker_ready")
worker_shutting_down = Signal("worker_shutting_down", {"sig", "how", "exitcode"})
worker_shutdown = Signal("worker_shutdown")
heartbeat_sent = Signal("heartbeat_sent")

# --- beat ---------------------------------------------------------------------------------------
beat_init = Signal("beat_init")
beat_embedded_init = Signal("beat_embedded_init")

# --- logging ------------------------------------------------------------------------------------
setup_logging = Signal("setup_logging", {"loglevel", "logfile", "format", "colorize"})
after_setup_logger = Signal("after_setup_logger", {"logger", "loglevel", "logfile", "format", "colorize"})
after_setup_task_logger = Signal("after_setup_task_logger", {"logger", "loglevel", "logfile", "format",
                                                             "colorize"})
