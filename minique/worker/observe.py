"""The worker parent's window on the outside: remote control commands (and metrics, when on)."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict

import redis

from .. import keys, serializers

log = logging.getLogger("minique.worker")


class Observer:
    """A thread in the worker parent that answers control commands published on minique:control."""

    def __init__(self, worker: Any):
        self.worker = worker
        self.client = worker.app.broker_client
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="minique-control", daemon=True)
        self.handlers: Dict[str, Callable[[dict], Any]] = {
            "ping": lambda a: "pong",
            "active": lambda a: worker.active(),
            "reserved": self._reserved,
            "scheduled": self._scheduled,
            "registered": lambda a: sorted(n for n in worker.app.tasks if not n.startswith("minique.")),
            "stats": lambda a: worker.stats(),
            "revoked": lambda a: sorted(r.decode() for r in self.client.zrangebyscore(keys.REVOKED, time.time(), "+inf")),
            "revoke": lambda a: worker.revoke(a.get("task_ids", []), a.get("terminate", False),
                                              a.get("signal", "SIGTERM")) or "revoked",
            "shutdown": lambda a: worker.shutdown("warm") or "shutting down",
            "pool_grow": lambda a: self._resize(+int(a.get("n", 1))),
            "pool_shrink": lambda a: self._resize(-int(a.get("n", 1))),
            "rate_limit": lambda a: "rate limits are not enforced by this version",
        }

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _reserved(self, args: dict) -> list:
        pool = self.worker.pool
        active = {a["id"] for a in self.worker.active()}
        out = []
        for m in list(pool.members.values()):
            for d in self.worker.app.broker.held_by(m.name, self.worker.queues):
                from ..message import peek_id
                tid = peek_id(d.data)
                if tid not in active:
                    out.append({"id": tid, "delivery_info": {"queue": d.queue, "priority": d.priority}})
        return out

    def _scheduled(self, args: dict) -> list:
        out = []
        for q in self.worker.queues:
            for member, score in self.client.zrange(keys.delayed(q), 0, 99, withscores=True):
                from ..message import decode
                try:
                    msg = decode(member[1:])
                except Exception:
                    continue
                out.append({"eta": score / 1000.0, "priority": msg.priority,
                            "request": {"id": msg.id, "name": msg.task, "queue": q}})
        return out

    def _resize(self, delta: int) -> str:
        pool = self.worker.pool
        pool.resize(pool.size + delta)
        if delta < 0:
            for index in sorted(pool.members)[pool.size:]:
                pool.slots[index].request_stop()
                pool.kill(pool.members[index], 15, "shrink")
        return f"pool size {pool.size}"

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(keys.CONTROL)
                while not self.stopped.is_set():
                    item = pubsub.get_message(timeout=0.5)
                    if item is not None:
                        self._handle(item["data"])
            except redis.exceptions.RedisError as exc:
                log.warning("control channel lost (%s); reconnecting", exc)
                self.stopped.wait(0.5)

    def _handle(self, raw: bytes) -> None:
        try:
            cmd = serializers.unpack(raw)
        except Exception:
            return
        dest = cmd.get("dest")
        if dest and self.worker.hostname not in dest:
            return
        handler = self.handlers.get(cmd.get("cmd"))
        if handler is None:
            answer: Any = {"error": f"unknown command {cmd.get('cmd')!r}"}
        else:
            try:
                answer = handler(cmd.get("args") or {})
            except Exception as exc:  # noqa: BLE001 - a bad command must not kill the worker
                answer = {"error": repr(exc)}
        if cmd.get("reply_to"):
            key = keys.reply(cmd["reply_to"])
            pipe = self.client.pipeline(transaction=False)
            pipe.rpush(key, serializers.pack({self.worker.hostname: answer}))
            pipe.expire(key, 60)
            pipe.execute()
