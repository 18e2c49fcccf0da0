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

import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Tuple, cast

import redis
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster

from .keys import hash_slot

Emitter = Callable[[Any, List[Any]], List[Tuple[Any, ...]]]
_ON_REPLY = "minique_on_reply"
_WAIT = "minique_wait"  # the WAIT that ends a confirmed write (FastPipeline.confirm)


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


def _pack_py(args: Tuple[Any, ...]) -> bytes:
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
pack_command = _pack  # (public: the asyncio client packs commands the same way)


def _handle(answered: Iterable[Tuple[Dict[str, Any], Any]], raise_on_error: bool) -> None:
    """Hand each reply to its command's handler (a reply that is an error and has none is raised);
    every handler runs, and the first error is raised after them."""
    error = None
    for options, reply in answered:
        on_reply = options.get(_ON_REPLY)
        try:
            if on_reply is not None:
                on_reply(reply)
            elif isinstance(reply, Exception):
                raise reply
        except Exception as exc:  # noqa: BLE001 - raised once the other handlers ran
            error = error or exc
    if error is not None and raise_on_error:
        raise error


FAILOVER_TIMEOUT = 20.0  # seconds a client keeps retrying what a failover refuses before the caller sees it
_TRANSIENT = (redis.exceptions.ReadOnlyError, redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError,
              redis.exceptions.BusyLoadingError)  # (redis-py strips these codes from the message)
_TRANSIENT_CODES = ("NOREPLICAS", "READONLY", "MASTERDOWN", "LOADING", "TRYAGAIN", "CLUSTERDOWN")


def transient(exc: BaseException) -> bool:
    """An error a failover causes for a while (a master without its replicas, a demoted master, a slot
    being moved): the command did not run, and runs once the deployment settles."""
    return isinstance(exc, _TRANSIENT) or (isinstance(exc, redis.exceptions.ResponseError)
                                           and str(exc).startswith(_TRANSIENT_CODES))


class _Handled:
    """`call`, `gather` and an `execute` that runs reply handlers, over a redis-py pipeline (mixed in)."""

    _handlers: List[Tuple[int, Callable[[Any], None]]]
    _gathered: Dict[Tuple[Any, ...], List[Any]]

    def call(self, on_reply: Callable[[Any], None], *args: Any) -> None:
        self._handlers.append((len(self), on_reply))  # type: ignore[arg-type]  # (a pipeline has a length)
        self.pipeline_execute_command(*args)  # type: ignore[attr-defined]

    def gather(self, emit: Emitter, key: Any, item: Any) -> None:
        self._gathered.setdefault((emit, key), []).append(item)

    def execute(self, raise_on_error: bool = True) -> List[Any]:
        """Send everything queued; run the handlers (which may queue more: sent before returning)."""
        out: List[Any] = []
        while len(self) or self._gathered:  # type: ignore[arg-type]
            gathered, self._gathered = self._gathered, {}
            for (emit, key), items in gathered.items():
                for args in emit(key, items):
                    self.pipeline_execute_command(*args)  # type: ignore[attr-defined]
            handlers, self._handlers = self._handlers, []
            replies = super().execute(raise_on_error=not handlers and raise_on_error)  # type: ignore[misc]
            out.extend(replies)
            for index, on_reply in handlers:
                on_reply(replies[index])
            if handlers and raise_on_error:
                handled = {index for index, _ in handlers}
                errors = [r for i, r in enumerate(replies) if i not in handled and isinstance(r, Exception)]
                if errors:
                    raise errors[0]
        return out


class ClientPipe(_Handled, redis.client.Pipeline):
    """A redis-py pipeline that is also a `Pipe`: reply handlers run and gathered items are emitted
    when its owner calls `execute()` (one round trip). For writes off the task path. Given a cluster
    client, a `ClusterClientPipe` (each command sent to the node of its key's slot)."""

    def __new__(cls, client: Any, transaction: bool = False) -> Any:
        if cls is ClientPipe and isinstance(client, RedisCluster):
            return ClusterClientPipe.of(client, transaction)
        return super().__new__(cls)

    def __init__(self, client: "redis.Redis", transaction: bool = False):
        super().__init__(client.connection_pool, client.response_callbacks, transaction, None)
        self._handlers = []
        self._gathered = {}


class ClusterClientPipe(_Handled, ClusterPipeline):
    """`ClientPipe` on a Redis Cluster: redis-py's ClusterPipeline (routing, MOVED/ASK) with the Pipe verbs."""

    @classmethod
    def of(cls, client: RedisCluster, transaction: bool = False) -> "ClusterClientPipe":
        pipe: Any = client.pipeline(transaction=transaction)
        pipe.__class__ = cls  # (the same object, with the Pipe verbs: redis-py builds it for its client)
        pipe._handlers, pipe._gathered = [], {}
        return cast("ClusterClientPipe", pipe)


def is_cluster(client: Any) -> bool:
    """The client talks to a Redis Cluster (each command goes to the node of its key's slot)."""
    return isinstance(client, RedisCluster)


def fast_pipeline(client: Any) -> "FastPipeline":
    """The worker's pipe for `client`: one connection, or one per cluster node."""
    return ClusterFastPipeline(client) if isinstance(client, RedisCluster) else FastPipeline(client)


class FastPipeline(redis.client.Pipeline):
    """The worker's pipe: keeps one connection checked out, writes now and reads the replies later.

    The worker writes one of these before each task and reads the replies when it next has to wait
    for Redis anyway (the fetch at the end of a prefetched batch), so a task costs no round trip of
    its own. Commands stay owned by the pipeline until their replies are read: on a connection
    failure they are written again, so nothing written is lost (results, acks and event batches are
    idempotent; a follow-up message may then be sent twice, never lost).

    With `confirm(replicas, timeout)` (the transport option `wait_for_replicas`), every write ends with a
    WAIT: a write that fewer replicas than asked confirm is taken as refused and written again (to the
    new master, after a failover), so no result or ack lives on the master alone, where a failover would
    lose it. Off by default: no cost."""

    MAX_UNREAD = 512  # commands written and not yet answered before a write reads the backlog first

    def __init__(self, client: "redis.Redis"):
        super().__init__(client.connection_pool, client.response_callbacks, False, None)
        self._conn: Any = None
        self._unread: List[Any] = []  # commands written whose replies are still on the socket
        self._gathered: Dict[Tuple[Any, ...], List[Any]] = {}  # (emit, key) -> items, see gather
        self._wait: Optional[Tuple[Any, ...]] = None  # the WAIT that ends each write (confirm), or None

    def confirm(self, replicas: int, timeout: float) -> None:
        """End every write with WAIT `replicas` (see the class docstring)."""
        self._wait = ("WAIT", replicas, max(1, int(timeout * 1000))) if replicas else None

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
        if self._wait is not None:
            stack.append((self._wait, {_WAIT: True}))
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

    def collect(self, raise_on_error: bool = True) -> List[Any]:
        """Read the replies of every command written so far."""
        unread, self._unread = self._unread, []
        if not unread:
            return []
        conn = self._conn
        out: List[Any] = []
        refused = -1  # where the server began refusing writes for a while (a failover): sent again from there
        why: Any = None
        written = 0   # where the write being read began (confirm: a WAIT ends each write)
        try:
            for index, (_, options) in enumerate(unread):
                try:
                    reply = conn.read_response()
                except redis.exceptions.ResponseError as exc:
                    if refused < 0 and (transient(exc) or _WAIT in options):
                        refused, why = (written if _WAIT in options else index), exc
                    reply = exc
                if _WAIT in options:
                    if refused < 0 and not isinstance(reply, Exception) and int(reply) < self._wanted():
                        refused, why = written, f"only {int(reply)} replica(s) confirmed the write"
                    written = index + 1
                    reply = None  # (not an error of any command's)
                out.append(reply)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            self._lost(conn, unread)
            raise
        if refused >= 0:
            self._lost(conn, unread[refused:])
            self._answer(unread[:refused], out[:refused], raise_on_error)
            raise redis.exceptions.ConnectionError(f"Redis refused writes for now ({why}); they are sent again")
        return self._answer(unread, out, raise_on_error)

    def _wanted(self) -> int:
        return int(self._wait[1]) if self._wait is not None else 0

    def _answer(self, unread: List[Any], out: List[Any], raise_on_error: bool) -> List[Any]:
        _handle(((options, reply) for (_, options), reply in zip(unread, out)), raise_on_error)
        return out

    def execute(self, raise_on_error: bool = True) -> List[Any]:
        """Write the queued commands and read the replies of everything written so far, in order."""
        self.write()
        return self.collect(raise_on_error)

    def reconnect(self) -> None:
        """Leave the connection (its server is no longer the master: worker/follow.py); what it has not
        answered yet is written again on the next one, as after a lost connection."""
        if self._conn is not None:
            self._lost(self._conn, [])

    def _lost(self, conn: Any, commands: List[Any]) -> None:
        # which of them Redis ran is unknown: keep all of them (and the unread ones) to write again
        # (not their WAITs: the next write ends with its own)
        conn.disconnect()
        again = self._unread + commands
        if self._wait is not None:
            again = [c for c in again if _WAIT not in c[1]]
        self.command_stack = again + self.command_stack
        self._unread = []

    def reset(self) -> None:  # type: ignore[override]  # (redis-py's stub types the RESET command's reply)
        self.command_stack = []
        self._gathered = {}

    def __len__(self) -> int:
        return len(self.command_stack) + len(self._gathered)


_CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def command_slot(args: Tuple[Any, ...]) -> int:
    """The slot of a command's key (the first key of a script): minique's commands name their key first."""
    name = args[0]
    name = (name.decode() if isinstance(name, bytes) else str(name)).upper()
    if name in ("EVAL", "EVALSHA"):
        return hash_slot(args[3]) if int(args[2]) > 0 else 0
    return hash_slot(args[1])


class ClusterFastPipeline(FastPipeline):
    """The worker's pipe on a Redis Cluster: each command goes to the master of its key's slot, on a
    connection per node kept checked out.

    A write sends the results, follow-ups, dead letters and events first (every node written at once)
    and reads their replies; then it writes the gathered acks, whose replies are read with the next
    write or collect. So an ack never reaches its node before the result it stands for is stored on
    another. (One server gets that for free: Redis runs one connection's commands in order. Across
    nodes only waiting gives it: a cluster worker pays a round trip per write that a single-server
    worker does not.) MOVED (the slot map is patched), ASK (sent again with ASKING), TRYAGAIN,
    CLUSTERDOWN and lost connections (the slot map is reloaded) are retried up to RETRIES times; past
    that, what was not confirmed stays queued and the error is raised, as FastPipeline does."""

    RETRIES = 8

    def __init__(self, client: RedisCluster):
        redis.client.Pipeline.__init__(self, None, {}, False, None)  # type: ignore[arg-type]  # no pool: per node
        self._cluster = client
        self._conns: Dict[str, Tuple[Any, Any]] = {}  # node name -> (its pool, a connection checked out)
        self._unread = []
        self._gathered = {}
        self._acks: List[Any] = []       # emitted acks not yet written: they leave after everything else
        self._inflight: List[Any] = []   # (node name, connection, items): acks written, replies not read yet
        self._answered: List[Any] = []   # (options, reply) confirmed; their handlers run at collect()

    def write(self) -> None:
        self._read_acks()  # (their replies come first on the connections the body goes out on)
        if self._gathered:
            gathered, self._gathered = self._gathered, {}
            self._acks.extend((args, {}) for (emit, key), items in gathered.items() for args in emit(key, items))
        if self.command_stack:
            stack, self.command_stack = self.command_stack, []
            left = self._send(stack)
            if left:
                self.command_stack = left[0] + self.command_stack
                raise left[1]
        if self._acks:  # everything before them is answered: written now, read later
            acks, self._acks = self._acks, []
            self._inflight, failed, _, error = self._write_nodes([(args, options, None) for args, options in acks])
            if failed:
                self._acks = [(args, options) for args, options, _ in failed] + self._acks
                raise error  # (kept: written again with the next write)

    def collect(self, raise_on_error: bool = True) -> List[Any]:
        """Read the acks' replies, then run the handlers of every reply confirmed since the last collect."""
        self._read_acks()
        answered, self._answered = self._answered, []
        _handle(answered, raise_on_error)
        return [reply for _, reply in answered]

    def _read_acks(self) -> None:
        if not self._inflight:
            return
        inflight, self._inflight = self._inflight, []
        retry, _, _ = self._read_nodes(inflight)
        if retry:
            left = self._send([(args, options) for args, options, _ in retry])
            if left:
                self._acks = left[0] + self._acks
                raise left[1]

    def _send(self, stack: List[Any]) -> Any:
        """Send `stack` to the nodes and read every reply; None, or (what was not confirmed, the error)."""
        todo: List[Tuple[Any, Any, Any]] = [(args, options, None) for args, options in stack]
        error: Exception = redis.exceptions.ConnectionError("no attempt")
        for attempt in range(self.RETRIES):
            if attempt:
                time.sleep(min(0.025 * 2 ** attempt, 1.0))
            written, retry, lost, write_error = self._write_nodes(todo)
            read_retry, read_lost, read_error = self._read_nodes(written)
            retry += read_retry
            error = read_error or write_error or error
            if not retry:
                return None
            if lost or read_lost:
                self._reload()
            todo = retry
        return [(args, options) for args, options, _ in todo], error

    def _write_nodes(self, todo: List[Any]) -> Tuple[List[Any], List[Any], bool, Exception]:
        """Write each item to its node (not reading): (written per node, items to retry, a node lost, error)."""
        error: Exception = redis.exceptions.ConnectionError("no error")
        retry: List[Tuple[Any, Any, Any]] = []
        lost = False
        by_node: Dict[str, Tuple[Any, List[Any]]] = {}
        try:
            for item in todo:
                node = item[2] or self._cluster.nodes_manager.get_node_from_slot(command_slot(item[0]))
                by_node.setdefault(node.name, (node, []))[1].append(item)
        except redis.exceptions.RedisClusterException as exc:  # a slot no node serves now
            return [], list(todo), True, exc
        written = []
        for name, (node, items) in by_node.items():
            try:
                conn = self._conn(node)
                commands = [c for item in items for c in ((("ASKING",), item[0]) if item[2] else (item[0],))]
                try:
                    packed = [b"".join([_pack(args) for args in commands])]
                except TypeError:  # an argument type only redis-py's encoder knows
                    packed = conn.pack_commands(commands)
                conn.send_packed_command(packed)
                written.append((name, conn, items))
            except _CONNECTION_ERRORS as exc:
                self._drop(name)
                error, lost = exc, True
                retry.extend(items)
        return written, retry, lost, error

    def _read_nodes(self, written: List[Any]) -> Tuple[List[Any], bool, Optional[Exception]]:
        """Read the replies of what `_write_nodes` wrote: confirmed ones go to `_answered`; returns
        (items to send again, a node lost, the last error)."""
        retry: List[Tuple[Any, Any, Any]] = []
        lost = False
        error: Optional[Exception] = None
        for name, conn, items in written:
            for n, item in enumerate(items):
                try:
                    if item[2] is not None:
                        conn.read_response()  # ASKING's OK
                    try:
                        reply = conn.read_response()
                    except redis.exceptions.ResponseError as exc:
                        reply = exc
                except _CONNECTION_ERRORS as exc:  # which of the rest ran is unknown: all again
                    self._drop(name)
                    error, lost = exc, True
                    retry.extend(items[n:])
                    break
                if isinstance(reply, redis.exceptions.MovedError):
                    self._cluster.nodes_manager.move_slot(reply)
                    error = reply
                    retry.append((item[0], item[1], None))
                elif isinstance(reply, redis.exceptions.AskError):
                    target = (self._cluster.nodes_manager.get_node(host=reply.host, port=reply.port)
                              or ClusterNode(reply.host, reply.port))
                    error = reply
                    retry.append((item[0], item[1], target))
                elif transient(reply):
                    error = reply
                    retry.append((item[0], item[1], None))
                else:
                    self._answered.append((item[1], reply))
        return retry, lost, error

    def _conn(self, node: Any) -> Any:
        found = self._conns.get(node.name)
        if found is None:
            pool = self._cluster.get_redis_connection(node).connection_pool
            found = self._conns[node.name] = (pool, pool.get_connection())
        return found[1]

    def _drop(self, name: str) -> None:
        found = self._conns.pop(name, None)
        if found is not None:
            found[1].disconnect()
            found[0].release(found[1])

    def _reload(self) -> None:
        """A node stopped answering: ask the others for the slot map (a replica may have taken over)."""
        try:
            self._cluster.nodes_manager.initialize()
        except Exception:  # noqa: BLE001 - the next attempt tries again
            pass

    def reset(self) -> None:  # type: ignore[override]
        self.command_stack = []
        self._gathered = {}
        self._acks = []
        for name, _, _ in self._inflight:  # (replies left on them: never reused half-read)
            self._drop(name)
        self._inflight = []

    def __len__(self) -> int:
        return len(self.command_stack) + len(self._gathered) + len(self._acks) + len(self._inflight)
