"""Every error minique raises, under one base class.

    MiniqueError
    ├── ConfigurationError        a broken setting or app
    │   └── InvalidQueueName      a queue name Redis keys cannot hold (also a ValueError)
    ├── NotRegistered             unknown task name
    ├── ContentDisallowed         a content type not in accept_content
    ├── DecodeError               a message that cannot be decoded
    ├── EncodeError               a value the serializer cannot encode (a task's return value)
    ├── TimeoutError              AsyncResult.get() waited too long
    ├── TaskRevokedError          the task was revoked (or expired)
    ├── MaxRetriesExceededError   retry() past max_retries with no exception to re-raise
    ├── ChordError                a chord header task failed
    ├── WorkerLostError           the process running the task died
    ├── SoftTimeLimitExceeded     raised inside a task at its soft time limit
    ├── TimeLimitExceeded         the task was killed at its hard time limit
    ├── RemoteError               a task failed with an exception whose class is not importable here
    └── TaskSignal                control flow a task raises on purpose (not errors)
        ├── Retry                 re-run the task later
        ├── Reject                drop (to the dead-letter stream) or requeue the message
        └── Ignore                neither store a result nor ack specially
"""
from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any, Optional, Tuple


class MiniqueError(Exception):
    """Base class of every minique error."""


class ConfigurationError(MiniqueError):
    """The app or one of its settings is broken."""


class InvalidQueueName(ConfigurationError, ValueError):
    """A queue name that cannot name a queue: empty, not a string, or with `{` or `}` (they would
    change its keys' hash tag, so scripts and dead letters would name another queue)."""


class NotRegistered(MiniqueError, KeyError):
    """No task is registered under this name."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the plain message
        return str(self.args[0]) if self.args else "task not registered"


class ContentDisallowed(MiniqueError):
    """The message's content type is not in accept_content."""


class DecodeError(MiniqueError):
    """The message or result could not be decoded."""


class EncodeError(MiniqueError):
    """A value the serializer cannot encode (kombu's EncodeError for Celery users)."""


class TimeoutError(MiniqueError, builtins.TimeoutError):  # noqa: A001 - Celery's name
    """AsyncResult.get() timed out."""


class TaskRevokedError(MiniqueError):
    """The task was revoked before it could finish."""


class MaxRetriesExceededError(MiniqueError):
    """The task asked to retry past its max_retries."""


class ChordError(MiniqueError):
    """A chord's header task failed, so its callback did not run."""


class WorkerLostError(MiniqueError):
    """The process running the task exited before it finished."""


class SoftTimeLimitExceeded(MiniqueError):
    """Raised inside the task when its soft time limit is reached; catch it to clean up."""


class TimeLimitExceeded(MiniqueError):
    """The task ran past its hard time limit and its process was killed."""


class RemoteError(MiniqueError):
    """A task raised an exception whose class cannot be imported here.

    `exc_type` is the remote class's qualified name, `remote_traceback` its traceback text.
    """

    def __init__(self, exc_type: str, message: str, remote_traceback: Optional[str] = None):
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.remote_traceback = remote_traceback


class TaskSignal(MiniqueError):
    """Base of the exceptions a task raises on purpose to steer the worker."""


class Retry(TaskSignal):
    """Raised by Task.retry(): the worker re-sends the task at `when` (epoch seconds)."""

    def __init__(self, message: Optional[str] = None, exc: Optional[BaseException] = None,
                 when: Optional[float] = None, **kwargs: Any):
        self.exc = exc
        self.when = when
        self.message = message
        # Task.retry(args=..., kwargs=...): the arguments the next run gets instead of this run's
        self.args_override: Any = None
        self.kwargs_override: Any = None
        super().__init__(message or (f"Retry in {when}" if when else "Retry"), exc)

    def humanize(self) -> str:
        return f"at {datetime.fromtimestamp(self.when).isoformat()}" if self.when else "now"


class Reject(TaskSignal):
    """Raised by a task to refuse its message: dead-lettered, or requeued when requeue=True."""

    def __init__(self, reason: Any = None, requeue: bool = False):
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)


class Ignore(TaskSignal):
    """Raised by a task so that the worker stores no state for it."""


class ExceptionInfo:
    """An exception with its traceback, as task hooks and signals get it (`einfo`; Celery's
    `billiard.einfo.ExceptionInfo` attributes): `exception`, `type`, `tb`, `traceback` (the text)."""

    internal = False

    def __init__(self, exc: BaseException, internal: bool = False):
        self.exception = exc
        self.type = type(exc)
        self.tb = exc.__traceback__
        self.internal = internal
        self._text: Optional[str] = None

    @property
    def exc_info(self) -> Tuple[type, BaseException, Any]:
        return self.type, self.exception, self.tb

    @property
    def traceback(self) -> str:
        """The formatted traceback (made when first read)."""
        if self._text is None:
            import traceback as tb_module
            try:
                self._text = "".join(tb_module.format_exception(self.type, self.exception, self.tb))
            except Exception:  # noqa: BLE001 - a broken __str__ must not fail what reports it
                self._text = f"{self.type.__qualname__}: <traceback unavailable>\n"
        return self._text

    def __str__(self) -> str:
        return self.traceback

    def __repr__(self) -> str:
        return f"<ExceptionInfo: {self.exception!r}>"


__all__ = [name for name, obj in list(globals().items())
           if isinstance(obj, type) and issubclass(obj, BaseException)] + ["ExceptionInfo"]
