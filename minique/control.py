"""Remote control and inspection of workers over Redis pub/sub (Celery's app.control API).

A command is published on `minique:control` as msgpack {cmd, args, dest, reply_to};
each addressed worker answers by pushing {hostname: reply} onto `minique:reply:<id>`,
which the caller drains until its timeout, or until every worker named in `destination`
answered. Replies have Celery's shapes: {"ok": ...} / {"error": ...} for commands, data
for inspection (see minique/worker/observe.py and docs/dashboard.md).

A revoke is written to the `minique:revoked` sorted set first (so workers started later know it
too), kept for as long as its task could still start (see `Control.revoke`). A revoked task that
waits in a delayed set (an ETA or countdown, a retry's back-off) is brought forward there, so a
worker takes it now and settles it as revoked (state REVOKED, errbacks and chord as for any
revoked task) instead of at its ETA.
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Set, Union

import redis

from . import keys, serializers
from .exceptions import ConfigurationError, DecodeError
from .keys import check_queue
from .message import decode

# seconds a revoked delayed task still waits before it is moved to its queue: every live worker has the
# revoke by then (a control message takes milliseconds), so the first to take it settles it as REVOKED.
# A worker that has not heard yet sees a task before its ETA and parks it again (the revoke is kept past
# the ETA for that case), so correctness never depends on this delay.
REVOKE_GRACE = 1.0
log = logging.getLogger("minique.control")


class Control:
    """`app.control`."""

    def __init__(self, app: Any):
        self.app = app

    def broadcast(self, command: str, arguments: Optional[Dict[str, Any]] = None,
                  destination: Optional[List[str]] = None, reply: bool = False, timeout: float = 1.0,
                  limit: Optional[int] = None) -> List[Dict[str, Any]]:
        client = self.app.broker_client
        if isinstance(destination, str):
            destination = [destination]
        reply_id = uuid.uuid4().hex if reply else None
        client.publish(keys.CONTROL, serializers.pack({"cmd": command, "args": arguments or {},
                                                       "dest": destination, "reply_to": reply_id}))
        if reply_id is None:
            return []
        out: List[Dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        want = limit or (len(destination) if destination else None)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (want is not None and len(out) >= want):
                break
            got = client.blpop([keys.reply(reply_id)], timeout=max(0.01, round(left, 3)))
            if got is None:
                break
            out.append(serializers.unpack(got[1]))
        client.delete(keys.reply(reply_id))  # late answers expire by themselves (60 s)
        return out

    # --- commands -----------------------------------------------------------------------------------
    def revoke(self, task_id: Union[str, Iterable[str]], destination: Optional[List[str]] = None,
               terminate: bool = False, signal: str = "SIGTERM", reply: bool = False, timeout: float = 1.0,
               **kwargs: Any) -> List[Dict[str, Any]]:
        """Revoke tasks: never run if not started; with terminate=True the running process gets `signal`.

        The revoke is kept `worker_revoke_expires` past the later of the task's ETA and expiry when the
        task waits in a delayed set (`_queues_to_search`), else past now. A task found waiting is then
        brought forward (due in REVOKE_GRACE), so a worker settles it as REVOKED now, not at its ETA."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        if not ids:
            return []
        keep = _revoke_expires(self.app.conf)
        broker, client = self.app.broker, self.app.broker_client
        waiting = {}
        for queue in self._queues_to_search():
            try:
                waiting[queue] = broker.find_delayed(queue, ids)
            except redis.exceptions.ResponseError as exc:  # a broken key, a role without the scripts
                log.warning("revoke: could not search the delayed set of queue %r (%s); a task waiting there "
                            "is revoked for worker_revoke_expires from now", queue, exc)
        now = time.time()
        until = dict.fromkeys(ids, now + keep)
        for found in waiting.values():
            for w in found:  # kept past the last moment it could start: its ETA, or its expiry if later
                until[w.task_id] = max(until[w.task_id], max(w.due, _expiry(w.data) or 0.0) + keep)
        pipe = client.pipeline(transaction=False)
        pipe.zadd(keys.REVOKED, until, gt=True)  # (an earlier revoke that lasts longer stays as long)
        pipe.zremrangebyscore(keys.REVOKED, "-inf", now)
        pipe.execute()
        replies = self.broadcast("revoke", {"task_ids": ids, "terminate": terminate, "signal": signal},
                                 destination, reply, timeout)
        for queue, found in waiting.items():  # after the broadcast: the workers hear first (REVOKE_GRACE)
            try:
                broker.bring_forward(queue, found, REVOKE_GRACE)
            except redis.exceptions.ResponseError as exc:  # it runs never, at its ETA it is settled as revoked
                log.warning("revoke: could not bring forward revoked tasks waiting in queue %r (%s): they are "
                            "settled as revoked at their ETA", queue, exc)
        return replies

    def _queues_to_search(self) -> Set[str]:
        """Where a revoked task may wait with an ETA: the default queue, the queues of the live workers
        (their heartbeats) and the queues `task_routes` names. (A task waiting elsewhere is still never
        run while its revoke is kept: `worker_revoke_expires` from the revoke.)"""
        conf = self.app.conf
        names = {conf.task_default_queue}
        try:
            heartbeats = self.app.broker_client.hvals(keys.WORKERS)
        except redis.exceptions.ResponseError as exc:
            log.warning("revoke: could not read the workers' heartbeats for their queues (%s)", exc)
            heartbeats = []
        for raw in heartbeats:
            try:
                queues = serializers.unpack(raw).get("queues")
            except Exception:  # noqa: BLE001 - any client can write a heartbeat: a broken one names no queue
                continue
            if isinstance(queues, list):
                names.update(q for q in queues if isinstance(q, str))
        routes = conf.task_routes
        for table in routes if isinstance(routes, (list, tuple)) else [routes]:
            if isinstance(table, dict):
                for route in table.values():
                    names.add(route.get("queue") if isinstance(route, dict) else route)
        return {q for q in names if isinstance(q, str) and q and "{" not in q and "}" not in q}

    def ping(self, destination: Optional[List[str]] = None, timeout: float = 1.0) -> List[Dict[str, Any]]:
        return self.broadcast("ping", {}, destination, True, timeout)

    def shutdown(self, destination: Optional[List[str]] = None, reply: bool = False,
                 timeout: float = 1.0) -> List[Dict[str, Any]]:
        return self.broadcast("shutdown", {}, destination, reply, timeout)

    def pool_grow(self, n: int = 1, destination: Optional[List[str]] = None, reply: bool = False,
                  timeout: float = 1.0) -> List[Dict[str, Any]]:
        return self.broadcast("pool_grow", {"n": n}, destination, reply, timeout)

    def pool_shrink(self, n: int = 1, destination: Optional[List[str]] = None, reply: bool = False,
                    timeout: float = 1.0) -> List[Dict[str, Any]]:
        return self.broadcast("pool_shrink", {"n": n}, destination, reply, timeout)

    def autoscale(self, max: Optional[int] = None, min: Optional[int] = None, destination: Optional[List[str]] = None,
                  reply: bool = False, timeout: float = 1.0) -> List[Dict[str, Any]]:
        """New bounds for the autoscaler of workers started with --autoscale (Celery's `autoscale`)."""
        return self.broadcast("autoscale", {"max": max, "min": min}, destination, reply, timeout)

    def rate_limit(self, task_name: str, rate_limit: Any, destination: Optional[List[str]] = None,
                   reply: bool = False, timeout: float = 1.0) -> List[Dict[str, Any]]:
        return self.broadcast("rate_limit", {"task_name": task_name, "rate_limit": rate_limit}, destination,
                              reply, timeout)

    def pause(self, queue: str, destination: Optional[List[str]] = None, reply: bool = False,
              timeout: float = 1.0) -> List[Dict[str, Any]]:
        """Stop every worker taking messages from `queue` (kept in Redis: workers started later obey it);
        what they reserved and have not started goes back to the queue. Workers also notice it within 2 s."""
        self.app.broker_client.sadd(keys.PAUSED, check_queue(queue, "control pause"))
        return self.broadcast("queues_changed", {"paused": queue}, destination, reply, timeout)

    def resume(self, queue: str, destination: Optional[List[str]] = None, reply: bool = False,
               timeout: float = 1.0) -> List[Dict[str, Any]]:
        """Undo `pause(queue)`."""
        self.app.broker_client.srem(keys.PAUSED, check_queue(queue, "control resume"))
        return self.broadcast("queues_changed", {"resumed": queue}, destination, reply, timeout)

    def paused(self) -> List[str]:
        """The paused queues."""
        return sorted(q.decode() for q in self.app.broker_client.smembers(keys.PAUSED))

    def inspect(self, destination: Optional[List[str]] = None, timeout: float = 1.0) -> "Inspect":
        return Inspect(self, destination, timeout)

    def purge(self) -> int:
        return sum(self.app.broker.purge(q) for q in self.app.broker.queues_known())


def _revoke_expires(conf: Any) -> float:
    value = conf.worker_revoke_expires
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigurationError(f"worker_revoke_expires must be seconds > 0, not {value!r:.40}")
    return float(value)


def _expiry(data: bytes) -> Optional[float]:
    """The `expires` of a message's envelope (None: none, or it does not decode; the worker will say why)."""
    try:
        return decode(data).expires
    except DecodeError:
        return None


class Inspect:
    """`app.control.inspect()`: each method returns {worker hostname: answer} (None when nobody answers)."""

    def __init__(self, control: Control, destination: Optional[List[str]], timeout: float):
        self.control = control
        self.destination = destination
        self.timeout = timeout

    def _ask(self, command: str, **args: Any) -> Optional[Dict[str, Any]]:
        merged: Dict[str, Any] = {}
        for r in self.control.broadcast(command, args, self.destination, True, self.timeout):
            merged.update(r)
        return merged or None

    def ping(self) -> Optional[Dict[str, Any]]:
        return self._ask("ping")

    def active(self) -> Optional[Dict[str, Any]]:
        return self._ask("active")

    def reserved(self) -> Optional[Dict[str, Any]]:
        return self._ask("reserved")

    def scheduled(self) -> Optional[Dict[str, Any]]:
        return self._ask("scheduled")

    def registered(self) -> Optional[Dict[str, Any]]:
        return self._ask("registered")

    def stats(self) -> Optional[Dict[str, Any]]:
        return self._ask("stats")

    def revoked(self) -> Optional[Dict[str, Any]]:
        return self._ask("revoked")

    def active_queues(self) -> Optional[Dict[str, Any]]:
        return self._ask("active_queues")
