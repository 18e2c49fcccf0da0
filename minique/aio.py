"""The asyncio client: `await task.adelay(...)`, `await result.aget()`, on redis-py's asyncio client.

Nothing here decides what is sent: messages are built by `app.build_message`, canvases planned by
`canvas.plan()`, publish signals sent by the app's own `_before_publish`/`_after_publish`, and the
Redis commands written by the broker's own `send`/`send_later` (into a `_Staged` list of commands) and
read back by the result store's own `decode_meta`. This module only carries those commands to Redis
without blocking the event loop.

- **One set of connections per event loop** (`Loops`): an app may be used from several loops (threads,
  or `asyncio.run` after `asyncio.run`); each loop gets its own `redis.asyncio` clients, created on
  first use there (the settings read and an embedded server resolved in a thread, off the loop) and
  closed when the loop shuts down (`asyncio.run` closes asynchronous generators last: a sentinel one
  closes them) or by `await app.aclose()`.
- **Sends share one connection, pipelined** (`_Sender`): every command issued while a write is in
  flight goes out with the next write, in one buffer, and its reply is handed back to its coroutine.
  100 coroutines sending at once cost a round trip per batch, not one each. A connection that fails
  mid-batch is replaced and the unanswered commands written again once (a message may then be sent
  twice, never lost, as the synchronous `send_now` does).
- **Waits** (`aget`) first look on the shared connection (LINDEX: no connection of their own when the
  result is there), then block in BRPOPLPUSH on a pooled connection of their own, as `get()` does.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

import redis
import redis.asyncio as aioredis
import redis.asyncio.retry as aioretry
from redis.backoff import ExponentialBackoff, NoBackoff

from . import keys, unique
from .backend import _BLOCK_CHUNK
from .exceptions import TimeoutError
from .message import Message
from .pipe import pack_command
from .result import AsyncResult
from .signals import after_task_publish, before_task_publish

_CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class _Staged:
    """A `Commands` that only records: the broker's `send`/`send_later` write into it, the sender sends."""

    __slots__ = ("commands",)

    def __init__(self) -> None:
        self.commands: List[Tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> None:
        self.commands.append(args)


def _packed(args: Tuple[Any, ...]) -> bytes:
    try:
        return cast("bytes", pack_command(args))
    except TypeError:  # an argument type only redis-py's encoder knows
        return b"".join(aioredis.Connection().pack_command(*args))


class _Sender:
    """Commands from any number of coroutines of one loop, written in batches on one connection."""

    def __init__(self, pool: aioredis.ConnectionPool):
        self.pool = pool
        self.conn: Any = None
        self.pending: List[Tuple[bytes, asyncio.Future[Any]]] = []  # (a packed command, its reply's future)
        self.flushing: Optional[asyncio.Task[Any]] = None

    async def run(self, commands: Sequence[Tuple[Any, ...]]) -> List[Any]:
        """Send `commands` (with whatever else is waiting) and return their replies, in order; a
        command's error reply is raised (after every reply of the batch is in)."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self.pending.extend(zip([_packed(args) for args in commands], futures))
        if self.flushing is None:
            self.flushing = loop.create_task(self._flush())
        try:
            replies = [await f for f in futures]  # (all settle together: one batch)
        except BaseException:
            for f in futures:  # (the others' errors are this one's: retrieved, not logged as lost)
                if f.done() and not f.cancelled():
                    f.exception()
            raise
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    await self._write(batch)
                except BaseException as exc:
                    error = exc if isinstance(exc, Exception) else \
                        redis.exceptions.ConnectionError(f"send interrupted: {exc!r}")
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(error)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            self.flushing = None
            pending, self.pending = self.pending, []
            for _, f in pending:  # (only after a cancellation: nothing else leaves them)
                if not f.done():
                    f.set_exception(redis.exceptions.ConnectionError("send interrupted"))

    @staticmethod
    async def _read(conn: Any, batch: List[Tuple[bytes, asyncio.Future[Any]]], read: List[int]) -> None:
        for _, f in batch[read[0]:]:
            try:
                reply: Any = await conn.read_response(timeout=math.inf)  # (inf: no timer of its own)
            except redis.exceptions.ResponseError as exc:
                reply = exc
            read[0] += 1
            if not f.done():  # (a cancelled caller: its command was sent all the same)
                f.set_result(reply)

    async def _write(self, batch: List[Tuple[bytes, asyncio.Future[Any]]]) -> None:
        read = [0]  # replies read so far: a retry writes only the commands after them
        for attempt in (1, 2):
            try:
                if self.conn is None:
                    self.conn = await self.pool.get_connection()
                conn = self.conn
                await conn.send_packed_command(b"".join([packed for packed, _ in batch[read[0]:]]),
                                               check_health=False)
                # one deadline for the batch's replies (a timer per reply costs a third of a send)
                await asyncio.wait_for(self._read(conn, batch, read), conn.socket_timeout)
                return
            except (*_CONNECTION_ERRORS, asyncio.TimeoutError):
                # Redis restarted or dropped the idle connection: the unanswered commands once more, on a
                # new connection (one that did land unanswered is then sent twice: never lost)
                await self._drop()
                if attempt == 2:
                    raise
            except BaseException:
                await self._drop()  # interrupted mid-reply: start clean next time
                raise

    async def _drop(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await conn.disconnect(nowait=True)
            await self.pool.release(conn)


class LoopClients:
    """One event loop's connections: the broker's and the result store's clients, and the sender."""

    def __init__(self, broker: aioredis.Redis, backend: aioredis.Redis):
        self.broker = broker
        self.backend = backend
        self.sender = _Sender(broker.connection_pool)
        self.backend_sender = self.sender if backend is broker else _Sender(backend.connection_pool)
        self.closer: Any = None  # the sentinel async generator (see Loops.clients)
        self.closed = False

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sender in {id(s): s for s in (self.sender, self.backend_sender)}.values():
            if sender.flushing is not None and not sender.flushing.done():
                sender.flushing.cancel()
        for client in {id(c): c for c in (self.broker, self.backend)}.values():
            await client.aclose()
            await client.connection_pool.disconnect()


async def _closer(loops: "Loops", loop: asyncio.AbstractEventLoop, clients: LoopClients) -> Any:
    """Closes a loop's clients when the loop closes its async generators (asyncio.run's shutdown)."""
    try:
        yield
    finally:
        loops.forget(loop, clients)
        await clients.close()


class Loops:
    """An app's asyncio side: the clients of each event loop that used it (`app.aio`)."""

    def __init__(self, app: Any):
        self.app = app
        self._lock = threading.Lock()
        self._by_loop: Dict[asyncio.AbstractEventLoop, LoopClients] = {}
        self._making: Dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] = {}  # first uses under way

    def forget(self, loop: asyncio.AbstractEventLoop, clients: LoopClients) -> None:
        with self._lock:
            if self._by_loop.get(loop) is clients:
                del self._by_loop[loop]

    async def clients(self) -> LoopClients:
        """This loop's clients, made on its first use here (once, however many coroutines ask at once)."""
        loop = asyncio.get_running_loop()
        found = self._by_loop.get(loop)
        if found is not None and not found.closed:
            return found
        making = self._making.get(loop)
        if making is None:
            making = self._making[loop] = loop.create_task(self._make(loop))
        return await asyncio.shield(making)  # (a cancelled caller does not cancel the others' set-up)

    async def _make(self, loop: asyncio.AbstractEventLoop) -> LoopClients:
        try:
            # settings, the embedded server, the sync broker and result store (whose command building and
            # decoding are used here): all may do blocking work the first time, so in a thread
            urls = await loop.run_in_executor(None, self._prepare)
            with self._lock:
                for other in [lp for lp in self._by_loop if lp.is_closed()]:  # loops closed without shutdown
                    del self._by_loop[other]
                broker = self._client(urls[0])
                backend = broker if urls[1] == urls[0] else self._client(urls[1])
                found = self._by_loop[loop] = LoopClients(broker, backend)
            found.closer = _closer(self, loop, found)
            await found.closer.asend(None)  # started on this loop: it is closed at the loop's shutdown
            return found
        finally:
            self._making.pop(loop, None)

    def _prepare(self) -> Tuple[str, str]:
        from .embedded import resolve_url
        app = self.app
        app.broker, app.backend  # noqa: B018 - made now (off the loop), used for their command building
        return resolve_url(app.conf.broker_url), resolve_url(app.conf.result_url)

    def _client(self, url: str) -> aioredis.Redis:
        """A redis.asyncio client for one server or a Sentinel group's master (asked of the sentinels on every
        connection, as the synchronous client does), retrying as `broker_connection_retry` says."""
        from .exceptions import ConfigurationError
        conf = self.app.conf
        target = self.app._deployment(url)
        timeouts: Dict[str, Any] = {"socket_timeout": conf.redis_socket_timeout,
                                    "socket_connect_timeout": conf.broker_connection_timeout}
        retry = (aioretry.Retry(ExponentialBackoff(cap=2.0, base=0.05), 8) if conf.broker_connection_retry
                 else aioretry.Retry(NoBackoff(), 0))
        on_error = [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
        if target.kind == "cluster":
            raise ConfigurationError("the asyncio client (adelay, aget, ...) does not reach a Redis Cluster yet: "
                                     "call the synchronous client in a thread, e.g. "
                                     "await asyncio.to_thread(task.delay, ...)")
        if target.kind == "sentinel":
            from redis.asyncio.sentinel import Sentinel, SentinelManagedSSLConnection
            sentinel = Sentinel(list(target.nodes), min_other_sentinels=target.min_other_sentinels,
                                sentinel_kwargs={**timeouts, "socket_timeout": timeouts["socket_connect_timeout"],
                                                 **(target.sentinel_kwargs or {})})
            return cast(aioredis.Redis, sentinel.master_for(
                str(target.master_name), username=target.username, password=target.password, db=target.db,
                health_check_interval=30, retry=retry, retry_on_error=on_error, **timeouts,
                **cast("Dict[str, Any]", {"connection_class": SentinelManagedSSLConnection} if target.ssl else {})))
        return aioredis.Redis.from_url(url, health_check_interval=30, retry=retry, retry_on_error=on_error, **timeouts)

    async def aclose(self) -> None:
        """Close this loop's connections (the next use here opens new ones)."""
        loop = asyncio.get_running_loop()
        found = self._by_loop.get(loop)
        if found is not None:
            self.forget(loop, found)
            if found.closer is not None:
                await found.closer.aclose()
            await found.close()

    # --- sending ------------------------------------------------------------------------------------
    def _stage(self, staged: _Staged, msg: Message, now: float) -> Tuple[Message, Any]:
        """The commands of one message, as `app.publish` writes them (before_task_publish first)."""
        app = self.app
        headers = None
        if before_task_publish.receivers:
            msg, headers = app._before_publish(msg)
        data = msg.encode()
        if msg.eta is not None and msg.eta > now:
            app.broker.send_later(staged, msg.queue, msg.priority, data, msg.eta)
        else:
            app.broker.send(staged, msg.queue, msg.priority, data)
        return msg, headers

    async def publish(self, messages: Sequence[Message], clients: Optional[LoopClients] = None) -> None:
        """Send built messages (one batch), then after_task_publish for each."""
        if clients is None:
            clients = await self.clients()
        staged = _Staged()
        now = time.time()
        sent = [self._stage(staged, msg, now) for msg in messages]
        await clients.sender.run(staged.commands)
        if after_task_publish.receivers:
            for msg, headers in sent:
                self.app._after_publish(msg, headers)

    async def send_task(self, name: str, args: Any, kwargs: Optional[Dict[str, Any]], options: Dict[str, Any]) -> Any:
        app = self.app
        clients = await self.clients()  # (first: on a first use, app.conf is read off the loop)
        task = app.tasks.get(name)
        if (task is not None and task.unique) or options.get("unique_key") is not None:
            return await self._send_unique(name, args, kwargs, options, task)
        msg = app.build_message(name, args, kwargs, options)
        await self.publish([msg], clients)
        return AsyncResult(msg.id, app=app, task_name=name)

    async def _send_unique(self, name: str, args: Any, kwargs: Optional[Dict[str, Any]], options: Dict[str, Any],
                           task: Any) -> Any:
        """send_task for a unique task (as `app._send_unique`): claim its key, then send."""
        app = self.app
        options, key, task_id, ttl = app._unique_options(name, args, kwargs, options, task)
        clients = await self.clients()
        holder = await self._script(clients, unique.SCRIPTS, "claim", [keys.unique(key)],
                                    [task_id, max(1, int(round(ttl)))])
        if holder:
            try:  # (counted as the sync path does: minique_tasks_deduplicated_total)
                await clients.sender.run([("HINCRBY", keys.DEDUPLICATED, name, 1)])
            except redis.exceptions.RedisError:
                pass
            return AsyncResult(holder.decode() if isinstance(holder, bytes) else str(holder), app=app,
                               task_name=name)
        try:
            await self.publish([app.build_message(name, args, kwargs, options)])
        except BaseException:
            await self._script(clients, unique.SCRIPTS, "release", [keys.unique(key)], [task_id])
            raise
        return AsyncResult(task_id, app=app, task_name=name)

    @staticmethod
    async def _script(clients: LoopClients, scripts: Any, name: str, script_keys: List[Any], args: List[Any]) -> Any:
        """EVALSHA through the sender; a server without the script gets EVAL (which also loads it)."""
        try:
            return (await clients.sender.run([("EVALSHA", scripts.shas[name], len(script_keys), *script_keys,
                                               *args)]))[0]
        except redis.exceptions.NoScriptError:
            return (await clients.sender.run([("EVAL", scripts.sources[name], len(script_keys), *script_keys,
                                               *args)]))[0]

    async def send_calls(self, calls: List[Any]) -> None:
        """Send planned canvas calls (`canvas.plan()`), as `app.send_calls` does: pipelined together."""
        app = self.app
        clients = await self.clients()
        messages = [app.build_message(name, a, k, o) for name, a, k, o in calls]
        for start in range(0, len(messages), 1000):
            await self.publish(messages[start:start + 1000], clients)

    # --- results ------------------------------------------------------------------------------------
    async def get_meta(self, task_id: str) -> Dict[str, Any]:
        clients = await self.clients()
        final, current = await clients.backend_sender.run([("LINDEX", keys.ready(task_id), 0),
                                                          ("GET", keys.result(task_id))])
        return cast("dict[str, Any]", self.app.backend.decode_meta(final if final is not None else current))

    async def wait(self, task_id: str, timeout: Optional[float] = None) -> Dict[str, Any]:
        """As `ResultBackend.wait`: until the task is ready (TimeoutError after `timeout` seconds)."""
        clients = await self.clients()
        ready = keys.ready(task_id)
        raw = (await clients.backend_sender.run([("LINDEX", ready, 0)]))[0]
        if raw is not None:
            return cast("dict[str, Any]", self.app.backend.decode_meta(raw))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _BLOCK_CHUNK if deadline is None else min(_BLOCK_CHUNK, deadline - time.monotonic())
            if left <= 0:
                raise TimeoutError(f"the operation timed out waiting for task {task_id}")
            raw = await clients.backend.brpoplpush(ready, ready, timeout=max(0.001, round(left, 3)))
            if raw is not None:
                return cast("dict[str, Any]", self.app.backend.decode_meta(raw))
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"the operation timed out waiting for task {task_id}")
