"""Remote control and inspection of workers over Redis pub/sub (Celery's app.control API).

A command is published on `minique:control` as msgpack {cmd, args, dest, reply_to};
each addressed worker answers by pushing {hostname: reply} onto `minique:reply:<id>`,
which the caller drains until its timeout, or until every worker named in `destination`
answered. Replies have Celery's shapes: {"ok": ...} / {"error": ...} for commands, data
for inspection (see minique/worker/observe.py and docs/dashboard.md). Revocations are
also written to the `minique:revoked` sorted set first, so workers started later know
them too.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Union

from . import keys, serializers
from .keys import check_queue

REVOKE_TTL = 3 * 3600  # seconds a revocation is remembered (Celery keeps them 3 h)


class Control:
    """`app.control`."""

    def __init__(self, app: Any):
        self.app = app

    def broadcast(self, command: str, arguments: Optional[dict] = None, destination: Optional[List[str]] = None,
                  reply: bool = False, timeout: float = 1.0, limit: Optional[int] = None) -> List[Dict[str, Any]]:
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
        """Revoke tasks: never run if not started; with terminate=True the running process gets `signal`."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        if not ids:
            return []
        client = self.app.broker_client
        expires = time.time() + REVOKE_TTL
        pipe = client.pipeline(transaction=False)
        pipe.zadd(keys.REVOKED, {i: expires for i in ids})
        pipe.zremrangebyscore(keys.REVOKED, "-inf", time.time())
        pipe.execute()
        return self.broadcast("revoke", {"task_ids": ids, "terminate": terminate, "signal": signal},
                              destination, reply, timeout)

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

    def rate_limit(self, task_name: str, rate_limit: Any, destination: Optional[List[str]] = None,
                   reply: bool = False, timeout: float = 1.0) -> List[Dict[str, Any]]:
        return self.broadcast("rate_limit", {"task_name": task_name, "rate_limit": rate_limit}, destination,
                              reply, timeout)

    def pause(self, queue: str, destination: Optional[List[str]] = None, reply: bool = False,
              timeout: float = 1.0) -> List[Dict[str, Any]]:
        """Stop every worker taking messages from `queue` (kept in Redis: workers started later obey it);
        what they already reserved still runs. Workers also notice it on their own within 2 s."""
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
