"""The broker interface: moves message bytes and receipts, nothing else.

Decoding, task lookup, retry decisions and canvas live above it, in the worker.
Two implementations: streams.StreamsBroker (default) and lists.ListsBroker; one
contract test suite (tests/test_broker_contract.py) runs against both.

Parts both share live here: the delayed set (ETA/countdown messages wait in a
sorted set and a Lua script moves the due ones into their queue atomically) and
the dead-letter stream.
"""
from __future__ import annotations

import logging
import math
import socket
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Collection, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple, cast

import redis

from .. import keys
from ..lua import Scripts
from ..message import peek_id
from ..pipe import FAILOVER_TIMEOUT, ClientPipe, Commands, Pipe, command_slot, is_cluster, transient

log = logging.getLogger("minique.broker")
COMMON_SCRIPTS = Scripts(Path(__file__).parent / "common")


class Delivery(NamedTuple):
    """A message handed to a consumer: its bytes, where it came from, and how to ack it."""

    data: bytes
    queue: str
    priority: int
    deliveries: int          # earlier deliveries of this message (0 the first time)
    receipt: Any             # broker-specific handle for ack / requeue
    problem: Optional[str] = None  # the broker's record is malformed (said why): dead-letter, never run


def count_of(raw: Any) -> Tuple[int, Optional[str]]:
    """A stored delivery count, or (0, what is wrong with it). Stored counts are whole numbers in
    ASCII digits, as the brokers' scripts check them too (`^%d+$`): both must call the same entries
    malformed."""
    if type(raw) is int:
        return (raw, None) if raw >= 0 else (0, f"delivery count {raw} is negative")
    if isinstance(raw, (bytes, str)) and raw.isascii() and raw.isdigit():
        return int(raw), None
    return 0, f"delivery count {raw!r:.40} is not a number"


class Waiting(NamedTuple):
    """A message waiting in a delayed set, found by its task id (`Broker.find_delayed`)."""

    task_id: str
    data: bytes              # the message's bytes
    due: float               # epoch seconds it falls due (its ETA)
    member: bytes            # its delayed-set member (priority digit + data), for `bring_forward`


# a malformed delayed-set member is set aside this long while its caller dead-letters it (see move_due.lua)
MALFORMED_LEASE_MS = 30_000


class _Collected:
    """Commands recorded as a client would run them (to be sent on one connection, then WAITed for)."""

    def __init__(self) -> None:
        self.commands: List[Tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> None:
        self.commands.append(args)


class Broker(ABC):
    """Queues over one Redis. Methods taking `pipe` add commands to a pipeline the caller flushes."""

    kind = "abstract"

    def __init__(self, client: "redis.Redis", visibility_timeout: float = 3600.0, max_deliveries: int = 10,
                 wait_for_replicas: int = 0, wait_timeout: float = 1.0):
        self.client = client
        # a client's send returns once this many replicas have it (WAIT): a failover then cannot lose it
        self.wait_for_replicas = wait_for_replicas
        self.wait_timeout = wait_timeout
        self.cluster = is_cluster(client)  # a Redis Cluster: no multi-slot script, read or transaction
        self.visibility_timeout = visibility_timeout
        self.max_deliveries = max_deliveries
        self.hostname = socket.gethostname()
        # called as (task id or None, reason) for each message the broker itself dead-letters (too many
        # deliveries, a malformed record), after it is in the dead letters; the worker parent records a final state
        self.on_dead_letter: Optional[Callable[[Optional[str], str], None]] = None
        self._malformed_seen: Set[Tuple[str, str]] = set()  # (kind, queue) of malformed records logged

    # --- producing ---------------------------------------------------------------------------------
    @abstractmethod
    def send(self, pipe: Commands, queue: str, priority: int, data: bytes) -> None:
        """Append a ready message to its queue."""

    def reconnect(self) -> None:
        """Drop a connection the broker keeps for itself (a Sentinel master moved: worker/follow.py)."""
        return None  # (none here)

    def send_now(self, queue: str, priority: int, data: bytes) -> None:
        """Send one ready message right away (the one-at-a-time `delay()` path)."""
        if self.wait_for_replicas:
            return self.send_many([(queue, priority, data, None)])
        self.send(self.client, queue, priority, data)

    def send_many(self, items: Sequence[Tuple[str, int, bytes, Optional[float]]]) -> None:
        """Send many (queue, priority, data, eta) at once, in one round trip (the bulk path); with
        `wait_for_replicas`, confirmed by that many replicas (`_send_confirmed`)."""
        if self.wait_for_replicas:
            return self._send_confirmed(items)
        deadline, delay = 0.0, 0.05
        while True:
            pipe = self.client.pipeline(transaction=False)
            self._queue_sends(pipe, items)
            try:
                pipe.execute()
                return
            except redis.exceptions.ResponseError as exc:  # a failover under way: all again (some twice)
                now = time.monotonic()
                deadline = deadline or now + FAILOVER_TIMEOUT
                if not transient(exc) or now >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _queue_sends(self, pipe: Commands, items: Sequence[Tuple[str, int, bytes, Optional[float]]]) -> None:
        for queue, priority, data, eta in items:
            if eta is not None:
                self.send_later(pipe, queue, priority, data, eta)
            else:
                self.send(pipe, queue, priority, data)

    def _send_confirmed(self, items: Sequence[Tuple[str, int, bytes, Optional[float]]]) -> None:
        """Send, then WAIT on the same connection until `wait_for_replicas` replicas have the writes (asked
        again every `wait_timeout` while the replicas lag). A lost connection or a refusal (a failover)
        sends everything again (a duplicate is possible, a loss is not); past FAILOVER_TIMEOUT the error
        reaches the caller, who then knows the messages may not be safe."""
        collected = _Collected()
        self._queue_sends(collected, items)
        deadline = time.monotonic() + FAILOVER_TIMEOUT
        if not self.cluster:
            return self._confirm(self.client.connection_pool, collected.commands, deadline)
        client: Any = self.client
        todo = collected.commands
        while todo:  # on a cluster, each node's writes and their WAIT on a connection to that node
            by_node: Dict[str, Tuple[Any, List[Tuple[Any, ...]]]] = {}
            failed: List[Tuple[Any, ...]] = []
            problem: Optional[Exception] = None
            for command in todo:
                try:
                    node = client.nodes_manager.get_node_from_slot(command_slot(command))
                except redis.exceptions.RedisClusterException as exc:  # no master for it now (a failover)
                    failed.append(command)
                    problem = exc
                    continue
                by_node.setdefault(node.name, (node, []))[1].append(command)
            for node, commands in by_node.values():  # (what one node confirmed is not sent again)
                try:
                    self._confirm(client.get_redis_connection(node).connection_pool, commands, deadline,
                                  reconnect=False)
                except (redis.exceptions.AskError, redis.exceptions.ConnectionError) as exc:  # (MOVED: an AskError)
                    failed.extend(commands)
                    problem = exc
            todo = failed
            if todo:
                if time.monotonic() >= deadline and problem is not None:
                    raise problem
                time.sleep(0.1)
                try:
                    client.nodes_manager.initialize()  # the slot moved, or its master changed: look again
                except redis.exceptions.RedisError:
                    pass

    def _confirm(self, pool: Any, commands: List[Tuple[Any, ...]], deadline: float, reconnect: bool = True) -> None:
        """`_send_confirmed` on one server (the connections of `pool`); without `reconnect`, a lost
        connection is raised at once (a cluster node: its caller looks for the slot's new master)."""
        wait = ("WAIT", self.wait_for_replicas, max(1, int(self.wait_timeout * 1000)))
        delay = 0.05
        while True:
            conn = pool.get_connection()
            try:
                conn.send_packed_command(conn.pack_commands([*commands, wait]))
                replies = []
                for _ in range(len(commands) + 1):
                    try:
                        replies.append(conn.read_response())
                    except redis.exceptions.ResponseError as exc:
                        replies.append(exc)
                refused = [r for r in replies if isinstance(r, Exception)]
                if refused and not all(transient(r) for r in refused):
                    raise refused[0]
                if not refused:
                    reached = int(replies[-1])
                    while reached < self.wait_for_replicas and time.monotonic() < deadline:
                        conn.send_command(*wait)  # (WAIT waits for this connection's last write)
                        reached = int(conn.read_response())
                    if reached >= self.wait_for_replicas:
                        return
                    raise redis.exceptions.ResponseError(
                        f"NOREPLICAS sent, but only {reached} of {self.wait_for_replicas} replicas have it after "
                        f"{FAILOVER_TIMEOUT:.0f} s (transport option wait_for_replicas): it may be lost in a failover")
                problem: Exception = refused[0]
                conn.disconnect()  # (a master refusing for now may be one no longer: a Sentinel connection
                # asks the sentinels again when it reconnects)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                conn.disconnect()
                if not reconnect:
                    raise
                problem = exc
            finally:
                pool.release(conn)
            if time.monotonic() >= deadline:
                raise problem
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def send_later(self, pipe: Commands, queue: str, priority: int, data: bytes, eta: float) -> None:
        """Park a message in the queue's delayed set until `eta` (epoch seconds)."""
        if self.wait_for_replicas and pipe is self.client:  # a client's send: confirmed by the replicas
            return self.send_many([(queue, priority, data, eta)])
        # rounded up to the ms: moved when due on the server's clock, so never before `eta`
        pipe.execute_command("ZADD", keys.delayed(queue), math.ceil(eta * 1000), str(priority).encode() + data)

    def move_due(self, queues: Iterable[str], limit: int = 1000) -> Tuple[int, Optional[float]]:
        """Move due delayed messages into their queues (atomic per message, safe to race).

        Returns (messages moved, epoch seconds of the next due message or None).
        A member without its priority digit is malformed: it is dead-lettered with the reason and
        removed from the delayed set; the others move as usual.
        """
        moved, next_due = 0, None
        for queue in queues:
            delayed = keys.delayed(queue)
            n, nxt, bad = COMMON_SCRIPTS(self.client, "move_due",
                                         [delayed] + [keys.queue(queue, p) for p in keys.PRIORITIES],
                                         [limit, self.kind, MALFORMED_LEASE_MS])
            moved += int(n)
            if nxt is not None and nxt != b"" and nxt != "":
                due = int(nxt) / 1000.0
                next_due = due if next_due is None else min(next_due, due)
            if bad:
                pipe = ClientPipe(self.client)
                for member in bad:
                    problem = f"delayed-set member without its priority digit 0-9 (starts {member[:8]!r})"
                    self.bury_malformed(pipe, "move_due", queue, member, problem, [("ZREM", delayed, member)])
                pipe.execute()
        return moved, next_due

    def find_delayed(self, queue: str, task_ids: Collection[str]) -> List[Waiting]:
        """The messages waiting in `queue`'s delayed set whose task id is one of `task_ids`.

        The set is read a page at a time (find_delayed.lua: ZSCAN, a substring filter in Redis), so a
        large set never holds Redis for long and only candidates cross the wire; each candidate's own id
        is then read with `peek_id` (the envelope only, never the body). A message that falls due during
        the search may be missed: it is in its queue then."""
        wanted = {i for i in task_ids if isinstance(i, str) and i}
        if not wanted:
            return []
        delayed, ids = keys.delayed(queue), sorted(wanted)
        count = max(16, 4096 // len(ids))  # members per page: the work of one call stays about the same
        found: Dict[bytes, Waiting] = {}
        cursor: Any = 0
        while True:
            cursor, page = COMMON_SCRIPTS(self.client, "find_delayed", [delayed], [cursor, count, *ids])
            for member, score in zip(page[::2], page[1::2]):
                task_id = peek_id(member[1:]) if member[:1].isdigit() else None  # (malformed: move_due's to bury)
                if task_id in wanted:
                    found[member] = Waiting(task_id, member[1:], float(score) / 1000.0, member)
            if cursor in (0, b"0", "0"):
                return list(found.values())

    def bring_forward(self, queue: str, waiting: Sequence[Waiting], delay: float) -> int:
        """Make these delayed messages of `queue` due `delay` seconds from now (server clock), unless
        due sooner already; one that has left the set meanwhile is not put back. Returns how many moved
        forward (bring_forward.lua)."""
        if not waiting:
            return 0
        return int(COMMON_SCRIPTS(self.client, "bring_forward", [keys.delayed(queue)],
                                  [max(0, round(delay * 1000)), *(w.member for w in waiting)]))

    # --- consuming ---------------------------------------------------------------------------------
    @abstractmethod
    def ensure_queues(self, queues: Sequence[str]) -> None:
        """Create what a consumer needs before it reads (idempotent)."""

    @abstractmethod
    def fetch(self, consumer: str, queues: Sequence[str], count: int, block: float,
              pipe: Optional[Pipe] = None) -> List[Delivery]:
        """Take up to `count` messages for `consumer`, highest priority first; wait up to `block` s.

        `pipe` (the worker's FastPipeline) holds writes that must reach Redis first: they go in the
        same round trip when the broker can, and every reply outstanding on it is read."""

    def fetch_ahead(self, pipe: Pipe, consumer: str, queues: Sequence[str], count: int,
                    on_found: Callable[[List[Delivery]], None]) -> bool:
        """Queue a non-blocking fetch in the worker's `pipe`; `on_found(deliveries)` gets what it took
        when its reply is read. False when the broker cannot (the consumer then fetches as usual)."""
        return False

    def wait(self, consumer: str, queues: Sequence[str], count: int, block: float) -> List[Delivery]:
        """Block up to `block` s for messages, right after a `fetch` found none (may skip its checks)."""
        return self.fetch(consumer, queues, count, block)

    @abstractmethod
    def ack(self, pipe: Pipe, delivery: Delivery) -> None:
        """Forget a delivered message: it is done (or dead-lettered)."""

    def requeue(self, delivery: Delivery, redelivered: bool, pipe: Optional[Pipe] = None) -> bool:
        """Put one held message back in its queue; count a delivery if it had started. Past
        max_deliveries it is dead-lettered instead (the worker's settle() decides that first; this
        is the backstop for other callers), and so is a malformed record (see `bury_malformed`).

        Queued in `pipe` (sent with the writes before it, so a requeue never overtakes the result
        written for the same task), or sent now without one; then returns whether it was
        dead-lettered."""
        own = pipe is None
        target: Pipe = ClientPipe(self.client) if pipe is None else pipe
        buried: List[bool] = []
        self._requeue(target, delivery, redelivered, lambda: buried.append(True))
        if own:
            target.execute()
        return bool(buried)

    @abstractmethod
    def _requeue(self, pipe: Pipe, delivery: Delivery, redelivered: bool, on_dead: Callable[[], None]) -> None:
        """Queue the requeue in `pipe`; past max_deliveries, the dead letter instead, and `on_dead()`."""

    @abstractmethod
    def release(self, consumer: str, queues: Sequence[str]) -> int:
        """Return every message `consumer` still holds to its queue, uncounted (it never started)."""

    @abstractmethod
    def held_by(self, consumer: str, queues: Sequence[str]) -> List[Delivery]:
        """The messages `consumer` holds (delivered, not acked)."""

    @abstractmethod
    def extend(self, consumer: str, queues: Sequence[str]) -> None:
        """Renew `consumer`'s claim on what it holds, so a live worker's tasks are not redelivered."""

    @abstractmethod
    def reclaim(self, queues: Sequence[str]) -> int:
        """Redeliver messages whose consumer stopped renewing for visibility_timeout (dead workers)."""

    @abstractmethod
    def held(self, queues: Sequence[str]) -> Dict[str, int]:
        """Messages delivered and not yet acked, per queue."""

    @abstractmethod
    def length(self, queue: str, priority: int) -> int:
        """Messages waiting in one queue at one priority."""

    def waiting(self, queues: Sequence[str]) -> int:
        """Messages ready in `queues` (every priority) that no consumer has taken: one round trip."""
        return sum(self.length(q, p) for q in queues for p in keys.PRIORITIES)

    @abstractmethod
    def purge(self, queue: str) -> int:
        """Delete every waiting message of `queue` (all priorities, delayed too); returns the count."""

    # --- dead letters ------------------------------------------------------------------------------
    def dead_letter(self, pipe: Commands, data: bytes, reason: str, queue: str = "", task_id: Optional[str] = None,
                    worker: str = "") -> None:
        """Record a message that cannot run, with why, where and when."""
        pipe.execute_command(*self._dead_letter_command(data, reason, queue, task_id, worker))

    def _dead_letter_command(self, data: bytes, reason: str, queue: str, task_id: Optional[str],
                             worker: str = "") -> Tuple[Any, ...]:
        return ("XADD", keys.DLQ, "*", "m", data, "reason", reason, "queue", queue,
                "task_id", task_id or "", "worker", worker or self.hostname, "time", repr(time.time()))

    def bury(self, pipe: Pipe, queue: str, data: bytes, reason: str, remove: Sequence[Tuple[Any, ...]]) -> None:
        """Dead-letter a record a script left in place (past max deliveries, or malformed), then remove
        it where it was with the `remove` commands, queued once the dead letter is written (the
        dead-letter stream is in another hash slot than the queue, so no script can do both): if the
        dead letter is refused, the record stays where it is and is found again, never lost."""
        task_id = peek_id(data)

        def written(reply: Any) -> None:
            if isinstance(reply, Exception):
                raise reply
            for command in remove:
                pipe.execute_command(*command)
            self._buried([task_id], reason)

        pipe.call(written, *self._dead_letter_command(data, reason, queue, task_id))

    def bury_malformed(self, pipe: Pipe, kind: str, queue: str, data: bytes, problem: str,
                       remove: Sequence[Tuple[Any, ...]]) -> None:
        """`bury` a record a script found malformed, `problem` saying how; logged once per `kind` (what
        found it) and queue: the dead letters hold every one with its reason."""
        self.bury(pipe, queue, data, f"malformed record: {problem}", remove)
        if (kind, queue) not in self._malformed_seen:
            self._malformed_seen.add((kind, queue))
            log.error("%s: dead-lettered a malformed record of queue %r: %s (logged once: see minique:dlq for "
                      "others)", kind, queue, problem)

    def dead_letters(self, count: int = 100, start: str = "-") -> List[Tuple[str, Dict[str, Any]]]:
        """The oldest `count` dead letters from `start` on, as (id, fields)."""
        out = []
        # redis-py types replies as bytes | str (and xrange's as optional); with decode_responses off: bytes
        entries = cast(List[Tuple[bytes, Dict[bytes, bytes]]], self.client.xrange(keys.DLQ, min=start, count=count))
        for entry_id, fields in entries:
            out.append((entry_id.decode(), {k.decode(errors="replace"): (v if k == b"m" else v.decode(errors="replace"))
                                            for k, v in fields.items()}))  # (any client can write one: never raise)
        return out

    def replay_dead_letter(self, entry_id: str, queue: Optional[str] = None, priority: int = 0) -> bool:
        """Send a dead letter back to its queue (or `queue`) and remove it from the dead letters."""
        entries = cast(List[Tuple[bytes, Dict[bytes, bytes]]],  # as in dead_letters
                       self.client.xrange(keys.DLQ, min=entry_id, max=entry_id))
        if not entries:
            return False
        fields = entries[0][1]
        target = queue or fields.get(b"queue", b"").decode() or "default"
        if self.cluster:  # the queue and the dead letters live in two slots: sent first, then removed
            self.send(self.client, target, priority, fields[b"m"])  # (a crash between: sent, and still listed)
            self.client.xdel(keys.DLQ, entry_id)
            return True
        pipe = self.client.pipeline(transaction=True)
        self.send(pipe, target, priority, fields[b"m"])
        pipe.xdel(keys.DLQ, entry_id)
        pipe.execute()
        return True

    def _buried(self, task_ids: Sequence[Optional[str]], reason: str) -> None:
        if self.on_dead_letter is None:
            return
        for task_id in task_ids:
            try:
                self.on_dead_letter(task_id, reason)
            except Exception:  # noqa: BLE001 - the dead letter is recorded; its state is best effort
                pass

    def purge_dead_letters(self) -> int:
        n = self.client.xlen(keys.DLQ)
        self.client.delete(keys.DLQ)
        return n

    def oldest_waiting(self, queues: Sequence[str]) -> Dict[str, float]:
        """When the oldest message still waiting in each queue entered it (epoch seconds); queues with
        none waiting, or a broker that cannot tell (lists do not keep the time), are left out."""
        return {}

    def delayed_count(self, queue: str) -> int:
        return self.client.zcard(keys.delayed(queue))

    def queues_known(self) -> List[str]:
        """Queue names that have keys in Redis (for status views; uses SCAN, never KEYS)."""
        names = set()
        for key in self.client.scan_iter(match=f"{keys.PREFIX}:{{*}}:*", count=1000):
            names.add(keys.queue_name_of(key.decode()))
        return sorted(names)
