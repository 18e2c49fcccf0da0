"""Where brokers and the result store queue their writes: the `Pipe` protocol and its two makers.

Brokers and the result store never send anything themselves on the worker's path: they add
commands to a pipe, and whoever owns the pipe decides when it reaches Redis (the worker's
Outbox, or a caller that executes a `ClientPipe`). Three verbs:
- `execute_command(*args)`: queue a command whose reply only needs to be checked;
- `call(on_reply, *args)`: queue a command whose reply a handler reads (a chord's join);
- `gather(emit, key, item)`: queue an item that leaves with the others of its (emit, key) at the
  next write, as few commands (one XACK for every ack a write makes on one stream), after
  everything else queued with it, which is what keeps acks behind the results they stand for.

`Commands` is the part a plain redis-py client also offers (it runs the command at once).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Protocol, Tuple

import redis

Emitter = Callable[[Any, list], List[tuple]]
_ON_REPLY = "minique_on_reply"


class Commands(Protocol):
    """Anything that takes a Redis command: a client (runs it now) or a pipeline (queues it)."""

    def execute_command(self, *args: Any, **options: Any) -> Any: ...


class Pipe(Commands, Protocol):
    """A pipeline whose owner decides when it is sent (see the module docstring)."""

    def call(self, on_reply: Callable[[Any], None], *args: Any) -> None: ...

    def gather(self, emit: Emitter, key: Any, item: Any) -> None: ...

    def execute(self, raise_on_error: bool = True) -> List[Any]:
        """Send what is queued and read every reply owed (its owner's call, or a fetch's)."""
        ...


def _pack_py(args: tuple) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        t = type(a)
        b = a if t is bytes else a.encode() if t is str else b"%d" % a if t is int else repr(float(a)).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


try:  # packing is a fifth of a pool process's Python time: hiredis's packer is 4x cheaper than redis-py's
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - without the hiredis extra
    _pack = _pack_py


class ClientPipe(redis.client.Pipeline):
    """A redis-py pipeline that is also a `Pipe`: reply handlers run and gathered items are emitted
    when its owner calls `execute()` (one round trip). For writes off the task path."""

    def __init__(self, client: "redis.Redis", transaction: bool = False):
        super().__init__(client.connection_pool, client.response_callbacks, transaction, None)
        self._handlers: List[Tuple[int, Callable[[Any], None]]] = []
        self._gathered: Dict[tuple, list] = {}

    def call(self, on_reply: Callable[[Any], None], *args: Any) -> None:
        self._handlers.append((len(self.command_stack), on_reply))
        self.pipeline_execute_command(*args)

    def gather(self, emit: Emitter, key: Any, item: Any) -> None:
        self._gathered.setdefault((emit, key), []).append(item)

    def execute(self, raise_on_error: bool = True) -> List[Any]:
        """Send everything queued; run the handlers (which may queue more: sent before returning)."""
        out: List[Any] = []
        while self.command_stack or self._gathered:
            gathered, self._gathered = self._gathered, {}
            for (emit, key), items in gathered.items():
                for args in emit(key, items):
                    self.pipeline_execute_command(*args)
            handlers, self._handlers = self._handlers, []
            replies = super().execute(raise_on_error=not handlers and raise_on_error)
            out.extend(replies)
            for index, on_reply in handlers:
                on_reply(replies[index])
            if handlers and raise_on_error:
                handled = {index for index, _ in handlers}
                errors = [r for i, r in enumerate(replies) if i not in handled and isinstance(r, Exception)]
                if errors:
                    raise errors[0]
        return out


class FastPipeline(redis.client.Pipeline):
    """The worker's pipe: keeps one connection checked out, writes now and reads the replies later.

    The worker writes one of these before each task and reads the replies when it next has to wait
    for Redis anyway (the fetch at the end of a prefetched batch), so a task costs no round trip of
    its own. Commands stay owned by the pipeline until their replies are read: on a connection
    failure they are written again, so nothing written is lost (results, acks and event batches are
    idempotent; a follow-up message may then be sent twice, never lost)."""

    MAX_UNREAD = 512  # commands written and not yet answered before a write reads the backlog first

    def __init__(self, client: "redis.Redis"):
        super().__init__(client.connection_pool, client.response_callbacks, False, None)
        self._conn: Any = None
        self._unread: list = []  # commands written whose replies are still on the socket
        self._gathered: Dict[tuple, list] = {}  # (emit, key) -> items, see gather

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Queue a command as it is (redis-py's per-command wrappers cost 4x more)."""
        self.command_stack.append((args, options))
        return self

    def gather(self, emit: Emitter, key: Any, item: Any) -> None:
        items = self._gathered.get((emit, key))
        if items is None:
            self._gathered[(emit, key)] = [item]
        else:
            items.append(item)

    def call(self, on_reply: Callable[[Any], None], *args: Any) -> None:
        """Queue a command whose reply (or error) is handed to `on_reply` when it is read; `on_reply`
        may queue more commands (they go with the next write), never wait for Redis itself."""
        self.command_stack.append((args, {_ON_REPLY: on_reply}))

    def mark(self) -> int:
        """Where the queue stands now, to take back what is queued after it (rollback). Gathered
        items are not covered: whoever marks queues them last, after anything that can fail."""
        return len(self.command_stack)

    def rollback(self, mark: int) -> None:
        """Forget the commands queued since `mark` (a message whose handling failed half-way)."""
        del self.command_stack[mark:]

    def write(self) -> None:
        """Send the queued commands without waiting for their replies."""
        if len(self._unread) >= self.MAX_UNREAD:
            self.collect()
        if self._gathered:  # last: after the results and follow-ups queued with them
            gathered, self._gathered = self._gathered, {}
            self.command_stack.extend((args, {}) for (emit, key), items in gathered.items()
                                      for args in emit(key, items))
        stack, self.command_stack = self.command_stack, []
        if not stack:
            return
        conn = self._conn
        if conn is None:
            conn = self._conn = self.connection_pool.get_connection()
        try:
            try:
                packed = [b"".join([_pack(args) for args, _ in stack])]
            except TypeError:  # an argument type only redis-py's encoder knows
                packed = conn.pack_commands([args for args, _ in stack])
            conn.send_packed_command(packed)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            self._lost(conn, stack)
            raise
        self._unread.extend(stack)

    def collect(self, raise_on_error: bool = True) -> list:
        """Read the replies of every command written so far."""
        unread, self._unread = self._unread, []
        if not unread:
            return []
        conn = self._conn
        out: list = []
        try:
            for _ in unread:
                try:
                    out.append(conn.read_response())
                except redis.exceptions.ResponseError as exc:
                    out.append(exc)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            self._lost(conn, unread)
            raise
        error = None
        for (_, options), reply in zip(unread, out):
            on_reply = options.get(_ON_REPLY)
            try:
                if on_reply is not None:
                    on_reply(reply)
                elif isinstance(reply, Exception):
                    raise reply
            except Exception as exc:  # every handler runs; the first error is raised after them
                error = error or exc
        if error is not None and raise_on_error:
            raise error
        return out

    def execute(self, raise_on_error: bool = True) -> list:
        """Write the queued commands and read the replies of everything written so far, in order."""
        self.write()
        return self.collect(raise_on_error)

    def _lost(self, conn: Any, commands: list) -> None:
        # which of them Redis ran is unknown: keep all of them (and the unread ones) to write again
        conn.disconnect()
        self.command_stack = self._unread + commands + self.command_stack
        self._unread = []

    def reset(self) -> None:  # type: ignore[override]  # (redis-py's stub types the RESET command's reply)
        self.command_stack = []
        self._gathered = {}

    def __len__(self) -> int:
        return len(self.command_stack) + len(self._gathered)
