"""The result store: task states and return values in Redis, and the chord join.

A task's latest non-final state lives in `res:{ID}`; its final state in the list
`res:{ID}:ready`, which `get()` blocks on (BRPOPLPUSH onto itself, so every waiter
wakes and the value stays). No polling anywhere.
"""
from __future__ import annotations

import importlib
import time
import traceback as tb_module
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, cast

import redis

from . import keys, serializers, states
from .exceptions import EncodeError, RemoteError, TimeoutError
from .lua import Scripts
from .pipe import ClientPipe, Commands, Pipe

SCRIPTS = Scripts(Path(__file__).parent / "backend_lua")
_BLOCK_CHUNK = 30.0  # seconds one blocking wait may take, below the socket timeout


def exception_to_dict(exc: BaseException) -> Dict[str, Any]:
    """A portable description of an exception (class path and message)."""
    cls = type(exc)
    return {"exc_type": cls.__qualname__, "exc_module": cls.__module__,
            "exc_message": [str(a) if not isinstance(a, (int, float, str, bool, type(None))) else a for a in exc.args]}


def exception_from_dict(data: Any, remote_tb: Optional[str] = None) -> BaseException:
    """Rebuild an exception: its own class where importable and an exception, else RemoteError."""
    if not isinstance(data, dict) or "exc_type" not in data:
        return RemoteError("Exception", repr(data), remote_tb)
    name, module = data["exc_type"], data.get("exc_module") or "builtins"
    args = data.get("exc_message") or []
    if not isinstance(args, list):
        args = [args]
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            try:
                exc = obj(*args)
            except Exception:
                exc = obj.__new__(obj)
                exc.args = tuple(args)
            return exc
    except Exception:
        pass
    return RemoteError(f"{module}.{name}", " ".join(map(str, args)), remote_tb)


class ResultBackend:
    def __init__(self, client: "redis.Redis", expires: Optional[float], serializer: str, accept: frozenset):
        self.client = client
        self.expires = int(expires) if expires else None
        self.serializer = serializer
        self.accept = frozenset(accept) | {serializer}

    # --- writing ------------------------------------------------------------------------------------
    def encode_meta(self, task_id: str, state: str, result: Any = None, traceback: Optional[str] = None,
                    serializer: Optional[str] = None, extra: Optional[Dict[str, Any]] = None) -> bytes:
        """The stored record of a state; EncodeError when `result` cannot be encoded."""
        ct = serializer or self.serializer
        if isinstance(result, BaseException):
            result = exception_to_dict(result)
        try:
            body = serializers.dumps(result, ct)
        except Exception as exc:  # TypeError, a circular value's ValueError, RecursionError, OverflowError...
            raise EncodeError(f"cannot encode the result with {ct}: {type(exc).__name__}: {exc}"[:1000]) from None
        meta = {"id": task_id, "s": state, "ct": ct, "r": body, "t": time.time()}
        if traceback:
            meta["tb"] = traceback
        if extra:
            meta.update(extra)
        return serializers.pack(meta)

    def store(self, pipe: Commands, task_id: str, state: str, result: Any = None, traceback: Optional[str] = None,
              serializer: Optional[str] = None, extra: Optional[Dict[str, Any]] = None) -> None:
        """Add the commands that record `state` for `task_id` to `pipe`. A result that cannot be
        encoded is the task's failure, said plainly (FAILURE with the EncodeError)."""
        try:
            meta = self.encode_meta(task_id, state, result, traceback, serializer, extra)
        except EncodeError as exc:
            state, meta = states.FAILURE, self.encode_meta(task_id, states.FAILURE, exc, None, "json")
        self.write_meta(pipe, task_id, state, meta)

    def write_meta(self, pipe: Commands, task_id: str, state: str, meta: bytes) -> None:
        """Add the commands that store an encoded record (encode_meta) of `state` to `pipe`."""
        command = pipe.execute_command
        if state in states.READY_STATES:
            ready = keys.ready(task_id)
            # one final state (a redelivered task's replaces the first), and no stale non-final one
            # (written together, Redis runs them back to back as it reads them)
            command("DEL", ready, keys.result(task_id))
            command("RPUSH", ready, meta)   # what get() blocks on
            if self.expires:
                command("EXPIRE", ready, self.expires)
        elif self.expires:
            command("SET", keys.result(task_id), meta, "EX", self.expires)
        else:
            command("SET", keys.result(task_id), meta)

    def mark(self, task_id: str, state: str, result: Any = None, traceback: Optional[str] = None, **kw: Any) -> None:
        """Store a state right away (outside the worker's batched path)."""
        pipe = ClientPipe(self.client)
        self.store(pipe, task_id, state, result, traceback, **kw)
        pipe.execute()

    # --- reading ------------------------------------------------------------------------------------
    def decode_meta(self, raw: Optional[bytes]) -> Dict[str, Any]:
        if raw is None:
            return {"status": states.PENDING, "result": None, "traceback": None, "date_done": None}
        meta = serializers.unpack(raw)
        value = serializers.loads(meta["r"], meta.get("ct", "json"), self.accept)
        status = meta["s"]
        if status in states.EXCEPTION_STATES and isinstance(value, dict) and "exc_type" in value:
            value = exception_from_dict(value, meta.get("tb"))
        return {"status": status, "result": value, "traceback": meta.get("tb"),
                "date_done": meta.get("t") if status in states.READY_STATES else None,
                "task_id": meta.get("id"),
                **{k: v for k, v in meta.items() if k not in ("s", "ct", "r", "tb", "t", "id")}}

    def get_meta(self, task_id: str) -> Dict[str, Any]:
        pipe = self.client.pipeline(transaction=False)
        pipe.lindex(keys.ready(task_id), 0)
        pipe.get(keys.result(task_id))
        final, current = pipe.execute()
        return self.decode_meta(final if final is not None else current)

    def wait(self, task_id: str, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Block until the task is ready (TimeoutError after `timeout` seconds).

        One command when the result is there or arrives in time: BRPOPLPUSH returns at once on a
        non-empty list, so there is no separate check first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ready = keys.ready(task_id)
        while True:
            left = _BLOCK_CHUNK if deadline is None else min(_BLOCK_CHUNK, deadline - time.monotonic())
            raw = cast(Optional[bytes],  # redis-py: bytes | str; decode_responses is off
                       self.client.brpoplpush(ready, ready, timeout=max(0.001, round(left, 3))))
            if raw is not None:
                return self.decode_meta(raw)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"the operation timed out waiting for task {task_id}")

    def forget(self, task_id: str) -> None:
        self.client.delete(keys.result(task_id), keys.ready(task_id))

    # --- groups and chords --------------------------------------------------------------------------
    def save_group(self, group_id: str, task_ids: Sequence[str]) -> None:
        self.client.set(keys.group(group_id), serializers.pack(list(task_ids)), ex=self.expires)

    def restore_group(self, group_id: str) -> Optional[List[str]]:
        raw = cast(Optional[bytes], self.client.get(keys.group(group_id)))  # as in wait()
        return None if raw is None else serializers.unpack(raw)

    def delete_group(self, group_id: str) -> None:
        self.client.delete(keys.group(group_id))

    def chord_join(self, pipe: Pipe, chord_id: str, index: int, size: int, result: Any, serializer: Optional[str],
                   on_complete: Any, lease: float = 60.0) -> None:
        """Record header member `index`'s result; `on_complete(results)` (in header order) is called
        for exactly one member: the one whose finish completed the chord. Joins by membership, so a
        redelivered member cannot count twice. The join rides on the worker's pipeline and is
        handled when its reply is read (no round trip of its own)."""
        ct = serializer or self.serializer
        encoded = serializers.pack([ct, serializers.dumps(result, ct)])

        def joined(raw: Any) -> None:
            if isinstance(raw, Exception):
                raise raw
            if raw is not None:
                on_complete([serializers.loads(body, ct, self.accept) for ct, body in map(serializers.unpack, raw)])

        SCRIPTS.queue(pipe, "chord_join", [keys.chord(chord_id), keys.chord_done(chord_id)],
                      [index, encoded, size, self.expires or 86400, int(lease)], joined)

    def chord_fail(self, chord_id: str) -> bool:
        """Claim the chord's end for a failure; True for exactly one caller."""
        return bool(self.client.set(keys.chord_done(chord_id), b"failed", nx=True, ex=self.expires or 86400))

    def chord_sent(self, pipe: Commands, chord_id: str) -> None:
        """Mark the callback as sent (after its message is in the broker) and drop the partial results."""
        pipe.execute_command("SET", keys.chord_done(chord_id), b"sent", "EX", self.expires or 86400)
        pipe.execute_command("DEL", keys.chord(chord_id))


def format_traceback(exc: BaseException) -> str:
    return "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__))
