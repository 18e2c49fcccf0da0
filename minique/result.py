"""Handles on results: AsyncResult for one task, GroupResult for several (Celery's API)."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Dict, Generic, Iterator, List, Optional, Tuple, TypeVar, cast

from . import context, states
from .exceptions import TaskRevokedError, TimeoutError

# What the task returns: `AsyncResult[int].get()` is an int. Covariant: a handle only gives values out,
# so an AsyncResult[int] is an AsyncResult[object]. Only type checkers read it (no run-time cost).
R_co = TypeVar("R_co", covariant=True)


def _assert_may_wait(disable_sync_subtasks: bool) -> None:
    request = context.current()
    if disable_sync_subtasks and request is not None and not request.is_eager and not request.called_directly:
        raise RuntimeError("Never call result.get() within a task! Pass disable_sync_subtasks=False "
                           "if you really must (it can deadlock a pool whose slots all wait).")


class AsyncResult(Generic[R_co]):
    """The result of one task, by id (`AsyncResult[R]` for type checkers: `get()` returns an R)."""

    def __init__(self, id: str, app: Any = None, task_name: Optional[str] = None,
                 parent: Optional["AsyncResult[Any]"] = None):
        self.id = id
        self.app = app if app is not None else context.current_app()
        self.task_name = task_name
        self.parent = parent
        self._cache: Optional[Dict[str, Any]] = None

    # --- state --------------------------------------------------------------------------------------
    def _meta(self) -> Dict[str, Any]:
        if self._cache is not None:
            return self._cache
        meta = self.app.backend.get_meta(self.id)
        if meta["status"] in states.READY_STATES:
            self._cache = meta
        return cast("dict[str, Any]", meta)

    @property
    def state(self) -> str:
        return cast("str", self._meta()["status"])

    status = state

    @property
    def result(self) -> Any:
        """The return value, or the exception when the task failed (Celery's `info`)."""
        return self._meta()["result"]

    info = result

    @property
    def traceback(self) -> Optional[str]:
        return cast("str | None", self._meta()["traceback"])

    @property
    def date_done(self) -> Optional[datetime]:
        done = self._meta()["date_done"]
        return None if done is None else datetime.fromtimestamp(done, tz=timezone.utc)

    @property
    def children(self) -> List[Any]:
        """What the task sent while it ran (stored with its result, as Celery's): an AsyncResult per
        task, a GroupResult per group or chord header; a chain appears as its first step."""
        return [_child(c, self.app) for c in self._meta().get("children") or ()]

    # --- result_extended (None when it is off, or the task has not stored a state yet) ---------------
    @property
    def name(self) -> Optional[str]:
        return self._meta().get("name")

    @property
    def args(self) -> Optional[List[Any]]:
        return self._meta().get("args")

    @property
    def kwargs(self) -> Optional[Dict[str, Any]]:
        return self._meta().get("kwargs")

    @property
    def worker(self) -> Optional[str]:
        return self._meta().get("worker")

    @property
    def queue(self) -> Optional[str]:
        return self._meta().get("queue")

    @property
    def retries(self) -> Optional[int]:
        return self._meta().get("retries")

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    # --- waiting ------------------------------------------------------------------------------------
    def get(self, timeout: Optional[float] = None, propagate: bool = True, interval: float = 0.5,
            disable_sync_subtasks: bool = True, follow_parents: bool = True) -> R_co:
        """Wait for the result (blocking in Redis, never polling); re-raise the task's exception.

        (With propagate=False a failed task's exception is returned instead: typed as R all the same,
        as Celery's stubs do; check `failed()` first when you pass it.)"""
        _assert_may_wait(disable_sync_subtasks)
        if self._cache is None:
            self._cache = self.app.backend.wait(self.id, timeout)
        return self._value(propagate)

    def _value(self, propagate: bool) -> R_co:
        """The value of a ready result (`_cache`), or its exception raised."""
        meta = self._cache
        assert meta is not None
        if meta["status"] == states.SUCCESS:
            return cast("R_co", meta["result"])
        if propagate:
            exc = meta["result"]
            if isinstance(exc, BaseException):
                raise exc
            raise TaskRevokedError(str(exc)) if meta["status"] == states.REVOKED else TimeoutError(repr(exc))
        return cast("R_co", meta["result"])

    wait = get

    # --- asyncio (minique/aio.py): the same, awaited; nothing blocks the event loop -------------------
    async def aget(self, timeout: Optional[float] = None, propagate: bool = True, **kwargs: Any) -> R_co:
        """`get` for asyncio code: `await result.aget(timeout=10)` (TimeoutError after `timeout`)."""
        if self._cache is None:
            self._cache = await self.app.aio.wait(self.id, timeout)
        return self._value(propagate)

    async def _ameta(self) -> Dict[str, Any]:
        if self._cache is not None:
            return self._cache
        meta = await self.app.aio.get_meta(self.id)
        if meta["status"] in states.READY_STATES:
            self._cache = meta
        return cast("dict[str, Any]", meta)

    async def astate(self) -> str:
        """The task's state now (`state`, awaited)."""
        return cast("str", (await self._ameta())["status"])

    async def ainfo(self) -> Any:
        """The return value, the exception, or a custom state's meta (`info`, awaited)."""
        return (await self._ameta())["result"]

    async def aready(self) -> bool:
        """`ready()`, awaited."""
        return await self.astate() in states.READY_STATES

    async def asuccessful(self) -> bool:
        """`successful()`, awaited."""
        return await self.astate() == states.SUCCESS

    async def afailed(self) -> bool:
        """`failed()`, awaited."""
        return await self.astate() == states.FAILURE

    def forget(self) -> None:
        self._cache = None
        self.app.backend.forget(self.id)

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM", **kwargs: Any) -> None:
        self.app.control.revoke(self.id, terminate=terminate, signal=signal)

    # --- protocol -----------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        return other == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __str__(self) -> str:
        return self.id

    def as_tuple(self) -> Tuple[Any, ...]:
        return (self.id, self.parent.as_tuple() if self.parent else None)


def _child(entry: Any, app: Any) -> Any:
    """A stored child (context.add_child): a task id, or [group id, [task ids]]."""
    if isinstance(entry, str):
        return AsyncResult(entry, app=app)
    group_id, ids = entry
    return GroupResult(group_id, [AsyncResult(i, app=app) for i in ids], app=app)


class GroupResult(Generic[R_co]):
    """Results of a group's tasks, in the group's order (`GroupResult[R]`: `get()` returns a list of R)."""

    def __init__(self, id: Optional[str], results: List[AsyncResult[R_co]], app: Any = None,
                 parent: Optional[AsyncResult[Any]] = None):
        self.id = id
        self.results = list(results)
        self.app = app if app is not None else context.current_app()
        self.parent = parent

    def __iter__(self) -> Iterator[AsyncResult[R_co]]:
        return iter(self.results)

    @property
    def children(self) -> List[AsyncResult[R_co]]:
        """The members (Celery's GroupResult.children)."""
        return self.results

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult[R_co]:
        return self.results[index]

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def waiting(self) -> bool:
        return not self.ready()

    def completed_count(self) -> int:
        return sum(1 for r in self.results if r.successful())

    def get(self, timeout: Optional[float] = None, propagate: bool = True, disable_sync_subtasks: bool = True,
            **kwargs: Any) -> List[R_co]:
        """Every member's result, in order; `timeout` covers the whole wait."""
        _assert_may_wait(disable_sync_subtasks)
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for r in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            out.append(r.get(timeout=left, propagate=propagate, disable_sync_subtasks=False))
        return out

    join = get

    async def aget(self, timeout: Optional[float] = None, propagate: bool = True, **kwargs: Any) -> List[R_co]:
        """`get` for asyncio code: every member's result, in order; `timeout` covers the whole wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for r in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            out.append(await r.aget(timeout=left, propagate=propagate))
        return out

    async def aready(self) -> bool:
        """`ready()`, awaited: every member is ready."""
        for r in self.results:
            if not await r.aready():
                return False
        return True

    def join_native(self, *args: Any, **kwargs: Any) -> List[R_co]:
        return self.get(*args, **kwargs)

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM") -> None:
        self.app.control.revoke([r.id for r in self.results], terminate=terminate, signal=signal)

    def forget(self) -> None:
        for r in self.results:
            r.forget()
        if self.id:
            self.app.backend.delete_group(self.id)

    def save(self) -> "GroupResult[R_co]":
        self.app.backend.save_group(self.id, [r.id for r in self.results])
        return self

    def delete(self) -> None:
        self.app.backend.delete_group(self.id)

    @classmethod
    def restore(cls, id: str, app: Any = None) -> Optional["GroupResult[Any]"]:
        app = app if app is not None else context.current_app()
        ids = app.backend.restore_group(id)
        return None if ids is None else cls(id, [AsyncResult(i, app=app) for i in ids], app=app)

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"


class EagerResult(AsyncResult[R_co]):
    """The result of a task run in-process (task_always_eager or .apply())."""

    def __init__(self, id: str, value: Any, state: str, traceback: Optional[str] = None, app: Any = None):
        self.id = id
        self.app = app
        self.task_name = None
        self.parent = None
        self._cache = {"status": state, "result": value, "traceback": traceback,
                       "date_done": time.time() if state in states.READY_STATES else None}

    def _meta(self) -> Dict[str, Any]:
        assert self._cache is not None  # set in __init__; forget() keeps it
        return self._cache

    def get(self, timeout: Optional[float] = None, propagate: bool = True, interval: float = 0.5,
            disable_sync_subtasks: bool = True, follow_parents: bool = True, **kwargs: Any) -> R_co:
        return super().get(timeout=timeout, propagate=propagate, disable_sync_subtasks=False)

    def forget(self) -> None:
        """Nothing is stored for eager results."""
