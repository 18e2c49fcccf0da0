"""The Streams broker (default): a Redis stream per queue and priority, read through one consumer group.

Each worker child is a consumer. A delivered message stays in the group's pending
entries list (PEL) until it is acked, so nothing a consumer took is lost when it
dies: its parent hands unstarted messages back at once, and a reaper on any
worker redelivers what a dead worker held after visibility_timeout. A live
worker renews its claims (XCLAIM JUSTID), so long tasks are never redelivered
while they run. Acked entries are deleted, so a stream holds only live messages.
"""
from __future__ import annotations

import os
import select
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, cast

import redis

from .. import keys
from ..lua import Scripts
from ..pipe import ClientPipe, Commands, Pipe, transient
from .base import Broker, Delivery, count_of

SCRIPTS = Scripts(Path(__file__).parent / "streams_lua")
REAPER = "minique-reaper"
_REFUSED = "stream entry refused by the broker's script"  # (the scripts and _delivery agree: never used)


def _xadd(queue: str, priority: int, data: bytes) -> bytes:
    """XADD {queue stream} * m <data>, packed as RESP by hand (redis-py's packing costs as much as
    building the message)."""
    key = keys.queue(queue, priority).encode()
    return b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$1\r\nm\r\n$%d\r\n%s\r\n" % (len(key), key, len(data), data)


def _ack_commands(key: str, entry_ids: List[Any]) -> List[Tuple[Any, ...]]:
    """Ack = leave the group's pending list and delete the entry (a stream keeps only live messages)."""
    return [("XACK", key, keys.GROUP, *entry_ids), ("XDEL", key, *entry_ids)]


class StreamsBroker(Broker):
    kind = "streams"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._read_keys: Dict[Tuple[Any, ...], List[Any]] = {}
        self._slot_groups: Dict[Tuple[Any, ...], List[List[Any]]] = {}
        self._turn = 0  # which slot group a cluster fetch starts with
        self._held: Any = None  # send_now's connection, with the pid that opened it
        self._held_pid = 0
        self._held_lock = threading.Lock()

    def send(self, pipe: Commands, queue: str, priority: int, data: bytes) -> None:
        pipe.execute_command("XADD", keys.queue(queue, priority), "*", "m", data)

    def send_now(self, queue: str, priority: int, data: bytes) -> None:
        """One XADD written as raw RESP on a connection this process keeps: redis-py's command
        machinery and pool checkout are most of a one-at-a-time `delay()`'s client cost. A thread
        that finds the connection busy goes through redis-py instead (no waiting, no per-thread
        connections left behind)."""
        if self.cluster or self.wait_for_replicas:  # (a cluster client routes per slot; WAIT: see send_many)
            return super().send_now(queue, priority, data)
        if not self._held_lock.acquire(blocking=False):
            return self.send(self.client, queue, priority, data)
        try:
            conn = self._held
            if conn is None or self._held_pid != os.getpid():  # first use, or a forked child
                conn = self._held = self.client.connection_pool.get_connection()
                self._held_pid = os.getpid()
            try:
                conn.send_packed_command([_xadd(queue, priority, data)])
                conn.read_response()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                # Redis restarted or the idle connection was dropped: once more through redis-py and
                # its retry policy (if the first XADD did land, the message is sent twice, never lost)
                conn.disconnect()
                self.send(self.client, queue, priority, data)
            except redis.exceptions.ResponseError as exc:
                if not transient(exc):
                    raise
                conn.disconnect()  # a failover under way (a demoted master, NOREPLICAS): the client retries
                self.send(self.client, queue, priority, data)
            except BaseException:
                conn.disconnect()  # interrupted mid-reply: start clean next time
                raise
        finally:
            self._held_lock.release()
        return None

    def reconnect(self) -> None:
        """Drop the connection send_now keeps: the next send opens it again, where the master is now."""
        with self._held_lock:
            if self._held is not None and self._held_pid == os.getpid():
                self._held.disconnect()

    def send_many(self, items: Sequence[Tuple[str, int, bytes, Optional[float]]]) -> None:
        """Bulk XADD: the commands are written as raw RESP in one buffer (redis-py's per-command
        packing costs as much as building the message), then every reply is read."""
        if self.cluster or self.wait_for_replicas or any(eta is not None for _, _, _, eta in items):
            return super().send_many(items)
        chunks = [_xadd(queue, priority, data) for queue, priority, data, _ in items]
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([b"".join(chunks)])
            for _ in chunks:
                conn.read_response()
        except redis.exceptions.ResponseError as exc:
            conn.disconnect()
            if not transient(exc):
                raise
            return super().send_many(items)  # (sent again: some may be sent twice, none lost)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def _keys(self, queues: Sequence[str]) -> List[Any]:
        """Stream keys in read order: priority 9 of every queue first, then 8, ..."""
        found = self._read_keys.get(tuple(queues))
        if found is None:
            found = [keys.queue(q, p) for p in reversed(keys.PRIORITIES) for q in queues]
            self._read_keys[tuple(queues)] = found
        return found

    def _groups(self, queues: Sequence[str]) -> List[List[Any]]:
        """The stream keys in read order, split by cluster slot (one group on a single server): a
        script or a read may only touch one slot. Groups start from a different one at each call, so
        that no node's queues always come last."""
        found = self._slot_groups.get(tuple(queues))
        if found is None:
            by_slot: Dict[int, List[Any]] = {}
            for key in self._keys(queues):  # (queues sharing a slot share a group: priority holds across them)
                by_slot.setdefault(keys.hash_slot(key), []).append(key)
            found = self._slot_groups[tuple(queues)] = list(by_slot.values()) if self.cluster else [self._keys(queues)]
        if len(found) > 1:
            self._turn = start = (self._turn + 1) % len(found)
            return found[start:] + found[:start]
        return found

    def ensure_queues(self, queues: Sequence[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in self._keys(queues):
            pipe.xgroup_create(key, keys.GROUP, id="0", mkstream=True)
        for result in pipe.execute(raise_on_error=False):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result

    def fetch(self, consumer: str, queues: Sequence[str], count: int, block: float,
              pipe: Optional[Pipe] = None) -> List[Delivery]:
        if self.cluster:
            return self._fetch_groups(consumer, queues, count, block, pipe)
        stream_keys = self._keys(queues)
        args = [keys.GROUP, consumer, count]
        try:
            if pipe is None:
                found = SCRIPTS(self.client, "fetch", stream_keys, args)
            else:  # the pending writes and the fetch in one round trip
                box: List[Any] = []
                pipe.call(box.append, "EVALSHA", SCRIPTS.shas["fetch"], len(stream_keys), *stream_keys, *args)
                pipe.execute()
                found = box[0]
                if isinstance(found, redis.exceptions.NoScriptError):
                    found = SCRIPTS(self.client, "fetch", stream_keys, args)
                elif isinstance(found, Exception):
                    raise found
            if not found and block > 0:
                found = self._read(consumer, stream_keys, count, block)
        except redis.exceptions.ResponseError as exc:
            if not _stream_gone(exc):
                raise
            self.ensure_queues(queues)  # a stream was deleted (purge, FLUSHDB): recreate and retry later
            return []
        return self._deliveries(found)

    def _fetch_groups(self, consumer: str, queues: Sequence[str], count: int, block: float,
                      pipe: Optional[Pipe]) -> List[Delivery]:
        """A cluster's fetch: the pending writes first (confirmed), then one fetch per slot group while
        fewer than `count` were found, merged by priority. Priority is strict within a group, not
        across groups (docs/scaling.md)."""
        if pipe is not None:
            pipe.execute()
        found: List[Delivery] = []
        try:
            for group in self._groups(queues):
                if len(found) >= count:
                    break
                found.extend(self._deliveries(SCRIPTS(self.client, "fetch", group,
                                                      [keys.GROUP, consumer, count - len(found)])))
            if not found and block > 0:
                found = self._deliveries(self._read_groups(consumer, self._groups(queues), count, block))
        except redis.exceptions.ResponseError as exc:
            if not _stream_gone(exc):
                raise
            self.ensure_queues(queues)
            return found
        if len(found) > 1:
            found.sort(key=lambda d: -d.priority)
        return found

    def fetch_ahead(self, pipe: Pipe, consumer: str, queues: Sequence[str], count: int,
                    on_found: Callable[[List[Delivery]], None]) -> bool:
        if self.cluster:  # (its fetch takes a round trip per slot group anyway)
            return False
        stream_keys = self._keys(queues)

        def got(found: Any) -> None:  # an error (NOSCRIPT, NOGROUP) finds nothing: the usual fetch handles it
            on_found([] if isinstance(found, Exception) else self._deliveries(found))

        pipe.call(got, "EVALSHA", SCRIPTS.shas["fetch"], len(stream_keys), *stream_keys, keys.GROUP, consumer, count)
        return True

    def wait(self, consumer: str, queues: Sequence[str], count: int, block: float) -> List[Delivery]:
        try:
            if self.cluster:
                return self._deliveries(self._read_groups(consumer, self._groups(queues), count, block))
            return self._deliveries(self._read(consumer, self._keys(queues), count, block))
        except redis.exceptions.ResponseError as exc:
            if not _stream_gone(exc):
                raise
            self.ensure_queues(queues)
            return []

    def _read(self, consumer: str, stream_keys: List[Any], count: int, block: float) -> Any:
        return self.client.xreadgroup(keys.GROUP, consumer, {k: ">" for k in stream_keys},
                                      count=count, block=max(1, int(block * 1000)))

    def _read_groups(self, consumer: str, groups: List[List[Any]], count: int, block: float) -> Any:
        """Block on every slot group at once (a connection each, on its node) and take what the first to
        answer found; the others are woken (CLIENT UNBLOCK) and whatever they took is kept too."""
        if len(groups) == 1:
            return self._read(consumer, groups[0], count, block)
        client: Any = self.client
        waits = []  # (node's client, connection, its client id)
        out: List[Any] = []
        try:
            for group in groups:
                try:
                    owner = client.nodes_manager.get_node_from_slot(keys.hash_slot(group[0]))
                except redis.exceptions.RedisClusterException as exc:  # no master for it now (a failover)
                    raise redis.exceptions.ConnectionError(str(exc)) from exc
                node = client.get_redis_connection(owner)
                conn = node.connection_pool.get_connection()
                waits.append((node, conn, None))
                conn.send_command("CLIENT", "ID")
                waits[-1] = (node, conn, conn.read_response())
                conn.send_command("XREADGROUP", "GROUP", keys.GROUP, consumer, "COUNT", count,
                                  "BLOCK", max(1, int(block * 1000)), "STREAMS", *group, *([">"] * len(group)))
            answered: Set[Any] = set()
            deadline = time.monotonic() + block + 5.0
            while len(answered) < len(waits):
                for i, (_, conn, _) in enumerate(waits):
                    if i not in answered and conn.can_read(timeout=0):
                        out.extend(_streams(conn.read_response()))
                        answered.add(i)
                if out or time.monotonic() > deadline:
                    break
                if len(answered) < len(waits):
                    select.select([w[1]._sock for i, w in enumerate(waits) if i not in answered], [], [],
                                  max(0.0, min(0.5, deadline - time.monotonic())))
            for i, (node, conn, client_id) in enumerate(waits):
                if i not in answered:  # still blocked: wake it (it returns what it has, or nothing)
                    node.execute_command("CLIENT", "UNBLOCK", client_id)
                    out.extend(_streams(conn.read_response()))
                    answered.add(i)
        except BaseException:
            for _, conn, _ in waits:
                conn.disconnect()  # a reply may be left on it: never hand it back half-read
            raise
        finally:
            for node, conn, _ in waits:
                node.connection_pool.release(conn)
        return out

    def _deliveries(self, found: Any) -> List[Delivery]:
        out = []
        for key, entries in found or ():
            key = key.decode() if isinstance(key, bytes) else key
            queue, priority = keys.queue_name_of(key), keys.priority_of(key)
            for entry_id, fields in entries:
                if isinstance(fields, list):  # from Lua: a flat [k, v, k, v]
                    fields = dict(zip(fields[::2], fields[1::2]))
                if not fields:  # deleted after delivery (a purge): nothing to run
                    continue
                data, count = fields.get(b"m"), fields.get(b"d", 0)
                if data is not None and (count == 0 or type(count) is bytes and count.isdigit()):
                    out.append(Delivery(data, queue, priority, int(count), (key, entry_id)))
                else:
                    out.append(_delivery(key, entry_id, fields))
        if len(out) > 1:
            out.sort(key=lambda d: -d.priority)
        return out

    def ack(self, pipe: Pipe, delivery: Delivery) -> None:
        key, entry_id = delivery.receipt
        pipe.gather(_ack_commands, key, entry_id)  # one XACK and one XDEL per stream and write

    def _requeue(self, pipe: Pipe, delivery: Delivery, redelivered: bool, on_dead: Callable[[], None]) -> None:
        key, entry_id = delivery.receipt

        def done(left: Any) -> None:
            if isinstance(left, Exception):
                raise left
            dead, bad = left
            if dead or bad:
                self._bury(pipe, key, dead, "too many deliveries")
                self._bury_malformed(pipe, "requeue", key, bad)
                on_dead()

        SCRIPTS.queue(pipe, "requeue", [key], [keys.GROUP, 1 if redelivered else 0, self.max_deliveries, entry_id],
                      done)

    def release(self, consumer: str, queues: Sequence[str]) -> int:
        total = 0
        for key in self._keys(queues):
            n, bad = SCRIPTS(self.client, "release", [key], [keys.GROUP, consumer, REAPER])
            total += int(n)
            if bad:
                pipe = ClientPipe(self.client)
                self._bury_malformed(pipe, "release", key, bad)
                pipe.execute()
        return total

    def held_by(self, consumer: str, queues: Sequence[str]) -> List[Delivery]:
        out = []
        for key in self._keys(queues):
            try:
                pending = self.client.xpending_range(key, keys.GROUP, "-", "+", 10000, consumername=consumer)
            except redis.exceptions.ResponseError:
                continue
            for p in pending:
                entries = cast(List[Tuple[bytes, Dict[bytes, bytes]]],  # redis-py: bytes | str; decode_responses off
                               self.client.xrange(key, p["message_id"], p["message_id"]))
                if entries and entries[0][1]:
                    out.append(_delivery(key, entries[0][0], entries[0][1]))
        return out

    def extend(self, consumer: str, queues: Sequence[str]) -> None:
        for key in self._keys(queues):
            SCRIPTS(self.client, "extend", [key], [keys.GROUP, consumer])

    def reclaim(self, queues: Sequence[str]) -> int:
        total = 0
        idle_ms = int(self.visibility_timeout * 1000)
        for key in self._keys(queues):
            cursor: Any = "0-0"
            for _ in range(1000):  # each call scans at most 1,000 pending entries; follow the cursor
                n, dead, cursor, bad = SCRIPTS(self.client, "reclaim", [key],
                                               [keys.GROUP, REAPER, idle_ms, 100, self.max_deliveries, cursor])
                total += int(n)
                if dead or bad:
                    pipe = ClientPipe(self.client)
                    self._bury(pipe, key, dead, "too many deliveries")
                    self._bury_malformed(pipe, "reclaim", key, bad)
                    pipe.execute()
                if cursor in (b"0-0", "0-0"):
                    break
        return total

    def _bury(self, pipe: Pipe, key: str, dead: List[Any], reason: str) -> None:
        """Dead-letter the entries a script left pending because they were delivered too often."""
        for entry_id, data in zip(dead[::2], dead[1::2]):
            self.bury(pipe, keys.queue_name_of(key), data, reason,
                      _ack_commands(key, [entry_id]))

    def _bury_malformed(self, pipe: Pipe, kind: str, key: str, bad: List[Any]) -> None:
        """Dead-letter the entries a script left pending because they are malformed ({id, fields, ...})."""
        for entry_id, flat in zip(bad[::2], bad[1::2]):
            found = _delivery(key, entry_id, dict(zip(flat[::2], flat[1::2])))
            self.bury_malformed(pipe, kind, found.queue, found.data, found.problem or _REFUSED,
                                _ack_commands(key, [entry_id]))

    def held(self, queues: Sequence[str]) -> Dict[str, int]:
        out: Dict[str, int] = {}
        pipe = self.client.pipeline(transaction=False)
        stream_keys = self._keys(queues)
        for key in stream_keys:
            pipe.xpending(key, keys.GROUP)
        for key, info in zip(stream_keys, pipe.execute(raise_on_error=False)):
            if isinstance(info, dict):
                q = keys.queue_name_of(key)
                out[q] = out.get(q, 0) + int(info.get("pending", 0))
        return out

    def oldest_waiting(self, queues: Sequence[str]) -> Dict[str, float]:
        """A stream entry's id is the millisecond it was added; the oldest waiting one is the first after
        the group's last-delivered id (acked entries are deleted, delivered ones come before it)."""
        stream_keys = self._keys(queues)
        pipe = self.client.pipeline(transaction=False)
        for key in stream_keys:
            pipe.xinfo_groups(key)
        after = []
        for key, groups in zip(stream_keys, pipe.execute(raise_on_error=False)):
            start = "-"  # no group yet (no worker has read it): every entry waits
            for group in groups if isinstance(groups, list) else ():
                if group.get("name") in (keys.GROUP, keys.GROUP.encode()):
                    last = group.get("last-delivered-id")
                    start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
            after.append((key, start))
        for key, start in after:
            pipe.xrange(key, min=start, count=1)
        out: Dict[str, float] = {}
        for (key, _), found in zip(after, pipe.execute(raise_on_error=False) if after else ()):
            if isinstance(found, list) and found:
                entry_id = found[0][0]
                added = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0]) / 1000
                q = keys.queue_name_of(key)
                out[q] = min(out.get(q, added), added)
        return out

    def length(self, queue: str, priority: int) -> int:
        """Waiting = in the stream and not delivered (delivered ones stay until acked)."""
        key = keys.queue(queue, priority)
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(key)
        pipe.xpending(key, keys.GROUP)
        total, pending = pipe.execute(raise_on_error=False)
        if isinstance(total, Exception):  # (XPENDING fails without the group: no pending; XLEN must answer)
            raise total
        pending = int(pending.get("pending", 0)) if isinstance(pending, dict) else 0
        return max(0, int(total) - pending)

    def waiting(self, queues: Sequence[str]) -> int:
        stream_keys = self._keys(queues)
        pipe = self.client.pipeline(transaction=False)
        for key in stream_keys:
            pipe.xlen(key)
            pipe.xpending(key, keys.GROUP)
        replies = pipe.execute(raise_on_error=False)
        total = 0
        for length, pending in zip(replies[::2], replies[1::2]):
            if isinstance(length, Exception):
                raise length
            held = int(pending.get("pending", 0)) if isinstance(pending, dict) else 0  # (no group yet: none)
            total += max(0, int(length) - held)
        return total

    def purge(self, queue: str) -> int:
        n = sum(self.length(queue, p) for p in keys.PRIORITIES) + self.delayed_count(queue)
        for key in keys.queue_priorities(queue):
            SCRIPTS(self.client, "purge", [key], [keys.GROUP])
        self.client.delete(keys.delayed(queue))
        return n


def _streams(reply: Any) -> Any:
    """A raw XREADGROUP reply as [(key, entries)]: RESP2 gives a list of pairs, RESP3 a map."""
    if isinstance(reply, dict):
        return list(reply.items())
    return reply or ()


def _stream_gone(exc: Exception) -> bool:
    """A read failed because a stream or its group is gone (deleted, or replaced while a read blocked on it)."""
    text = str(exc)
    return "NOGROUP" in text or "UNBLOCKED" in text


def _delivery(key: str, entry_id: Any, fields: Dict[bytes, Any]) -> Delivery:
    """A stream entry as a Delivery; a malformed entry (no message field, a bad delivery count) is
    delivered with its problem named, to be dead-lettered rather than crash its consumer. (The
    fetch path builds well-formed ones itself: this is per message.)"""
    queue, priority = keys.queue_name_of(key), keys.priority_of(key)
    count, problem = count_of(fields.get(b"d", 0))
    data = fields.get(b"m")
    if data is None:
        data, problem = b"", f"stream entry without its message field (fields: {sorted(fields)!r:.200})"
    return Delivery(data, queue, priority, count, (key, entry_id), problem)
