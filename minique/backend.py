"""The result store: task states and return values in Redis, and the chord join.

A task's latest non-final state lives in `res:{ID}`; its final state in the list
`res:{ID}:ready`, which `get()` blocks on (BRPOPLPUSH onto itself, so every waiter
wakes and the value stays). No polling anywhere.
"""
from __future__ import annotations

import sys
import time
import traceback as tb_module
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple, Type, cast

import redis

from . import caps, keys, serializers, states
from .exceptions import ContentDisallowed, DecodeError, EncodeError, RemoteError, TimeoutError
from .lua import Scripts
from .pipe import ClientPipe, Commands, Pipe

SCRIPTS = Scripts(Path(__file__).parent / "backend_lua")
_BLOCK_CHUNK = 30.0  # seconds one blocking wait may take, below the socket timeout


def exception_to_dict(exc: BaseException, max_size: Optional[int] = caps.EXCEPTION_MAX) -> Dict[str, Any]:
    """A portable description of an exception (class path and arguments), its texts cut to
    `max_size` characters in all (task_exception_max_size)."""
    cls = type(exc)
    return {"exc_type": cls.__qualname__, "exc_module": cls.__module__,
            "exc_message": caps.exception_args(exc.args, max_size)}


def exception_from_dict(data: Any, remote_tb: Optional[str] = None) -> BaseException:
    """Rebuild an exception: its own class when that class is already loaded here and is an Exception
    subclass, else RemoteError. Nothing is imported: a stored result (which anyone who can write to
    Redis can forge) must not make a client import a module it names."""
    if not isinstance(data, dict) or "exc_type" not in data:
        return RemoteError("Exception", repr(data), remote_tb)
    name, module = data["exc_type"], data.get("exc_module") or "builtins"
    args = data.get("exc_message") or []
    if not isinstance(args, list):
        args = [args]
    cls = loaded_exception_class(module, name)
    if cls is not None:
        try:
            return cls(*args)
        except Exception:
            exc = cls.__new__(cls)
            exc.args = tuple(args)
            return exc
    return RemoteError(f"{module}.{name}", " ".join(map(str, args)), remote_tb)


def loaded_exception_class(module: Any, qualname: Any) -> Optional[Type[Exception]]:
    """The class `module.qualname` if its module is in sys.modules already and it is an Exception
    subclass, else None. Never imports, and looks names up in the namespaces themselves (a module's
    `__getattr__` may import lazily). Only Exception: a stored SystemExit or KeyboardInterrupt would
    end the client that calls get()."""
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    found: Any = sys.modules.get(module)
    if found is None:
        return None
    for part in qualname.split("."):
        if not part.isidentifier() or part.startswith("__"):
            return None  # (<locals>, dunders: nothing a class path names)
        try:
            found = vars(found).get(part)
        except TypeError:  # an object without a namespace of its own
            return None
        if found is None:
            return None
    if isinstance(found, type) and issubclass(found, Exception):
        return found
    return None


class ResultBackend:
    def __init__(self, client: "redis.Redis", expires: Optional[float], serializer: str, accept: FrozenSet[Any],
                 exception_max: Optional[int] = caps.EXCEPTION_MAX, traceback_max: Optional[int] = caps.TRACEBACK_MAX):
        self.client = client
        self.expires = int(expires) if expires else None
        self.serializer = serializer
        self.accept = frozenset(accept) | {serializer}
        self.exception_max = exception_max    # task_exception_max_size: an exception's texts, in characters
        self.traceback_max = traceback_max    # task_traceback_max_size

    # --- writing ------------------------------------------------------------------------------------
    def encode_meta(self, task_id: str, state: str, result: Any = None, traceback: Optional[str] = None,
                    serializer: Optional[str] = None, extra: Optional[Dict[str, Any]] = None) -> bytes:
        """The stored record of a state; EncodeError when `result` cannot be encoded."""
        ct = serializer or self.serializer
        if isinstance(result, BaseException):
            result = exception_to_dict(result, self.exception_max)
        try:
            body = serializers.dumps(result, ct)
        except Exception as exc:  # TypeError, a circular value's ValueError, RecursionError, OverflowError...
            raise EncodeError(f"cannot encode the result with {ct}: {type(exc).__name__}: {exc}"[:1000]) from None
        meta = {"id": task_id, "s": state, "ct": ct, "r": body, "t": time.time()}
        if traceback:
            meta["tb"] = caps.cut_tail(traceback, self.traceback_max)
        if extra:
            meta.update(extra)
            if "args" in extra:  # result_extended: the arguments, encoded as the result is
                meta["args"], meta["kwargs"] = _encoded_arguments(extra["args"], extra.get("kwargs"), ct)
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
        out = {"status": status, "result": value, "traceback": meta.get("tb"),
               "date_done": meta.get("t") if status in states.READY_STATES else None,
               "task_id": meta.get("id"),
               **{k: v for k, v in meta.items() if k not in ("s", "ct", "r", "tb", "t", "id")}}
        if "args" in meta:  # result_extended
            out["args"], out["kwargs"] = (self._decoded_argument(meta["args"], meta.get("ct", "json")),
                                          self._decoded_argument(meta.get("kwargs"), meta.get("ct", "json")))
        return out

    def _decoded_argument(self, value: Any, content_type: str) -> Any:
        """A result_extended argument: bytes are encoded (as the result); a str is the repr stored when
        they would not encode; one that cannot be decoded here reads as None (the rest of the record stands)."""
        if not isinstance(value, bytes):
            return value
        try:
            return serializers.loads(value, content_type, self.accept)
        except (ContentDisallowed, DecodeError):
            return None

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
            try:
                raw = cast(Optional[bytes],  # redis-py: bytes | str; decode_responses is off
                           self.client.brpoplpush(ready, ready, timeout=max(0.001, round(left, 3))))
            except redis.exceptions.ResponseError as exc:
                if "UNBLOCKED" not in str(exc):
                    raise
                raw = None  # the server was demoted (a Sentinel failover): wait again, on the new master
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


def _encoded_arguments(args: Any, kwargs: Any, content_type: str) -> Tuple[Any, Any]:
    """result_extended's args and kwargs encoded with the result's serializer (as Celery stores them);
    when they will not encode with it (bytes under json, say), their reprs, cut as argsrepr is."""
    if args is None and kwargs is None:  # (unreadable: the worker could not decode them)
        return None, None
    try:
        return serializers.dumps(list(args or ()), content_type), serializers.dumps(dict(kwargs or {}), content_type)
    except Exception:  # noqa: BLE001 - the task's result stands; its arguments are shown as text
        return caps.safe_repr(tuple(args or ()), caps.ARGSREPR_MAX), caps.safe_repr(dict(kwargs or {}),
                                                                                    caps.ARGSREPR_MAX)


def format_traceback(exc: BaseException, line_max: Optional[int] = caps.EXCEPTION_MAX) -> str:
    """The exception's traceback as text, each piece (a frame, the message) cut to `line_max`
    characters: the message of a huge exception does not crowd out the frames (a stored traceback
    is cut once more, to task_traceback_max_size, keeping its end)."""
    try:
        chunks = tb_module.TracebackException.from_exception(exc).format()
        return "".join(caps.cut(chunk, line_max) for chunk in chunks)
    except Exception:  # noqa: BLE001 - a broken __str__ must not fail what reports it
        return f"{type(exc).__qualname__}: <traceback unavailable>\n"
