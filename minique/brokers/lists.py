"""The Lists broker: the reliable-queue pattern over plain Redis lists.

A fetch moves messages atomically (LMOVE, in Lua) from the queue into the
consumer's own processing list, so a message is always in exactly one list. Each
consumer renews a claim deadline in a per-queue sorted set; a reaper returns the
processing lists of consumers whose deadline passed (dead workers). Elements carry
a two-byte header: delivery count, priority.

Redis has no blocking move from several lists at once, so an idle consumer polls
with a short back-off (1 ms growing to 50 ms); use the Streams broker (the default)
for the lowest idle latency.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, cast

from .. import keys
from ..lua import Scripts
from ..pipe import ClientPipe, Commands, Pipe
from .base import Broker, Delivery

SCRIPTS = Scripts(Path(__file__).parent / "lists_lua")
_REFUSED = "list element refused by the broker's script"  # (the script and _delivery agree: never used)
_IDLE_MIN, _IDLE_MAX = 0.001, 0.05


def _header(deliveries: int, priority: int) -> bytes:
    return bytes((min(deliveries, 255), priority))


class ListsBroker(Broker):
    kind = "lists"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._idle = _IDLE_MIN

    def send(self, pipe: Commands, queue: str, priority: int, data: bytes) -> None:
        pipe.execute_command("LPUSH", keys.queue(queue, priority), _header(0, priority) + data)

    def ensure_queues(self, queues: Sequence[str]) -> None:
        """Lists need no set-up."""

    def _script_keys(self, queue: str, consumer: str) -> List[Any]:
        return [keys.consumers(queue), keys.processing(queue, consumer)] + keys.queue_priorities(queue)

    def fetch(self, consumer: str, queues: Sequence[str], count: int, block: float,
              pipe: Optional[Pipe] = None) -> List[Delivery]:
        if pipe is not None:
            pipe.execute()  # what must reach Redis first
        deadline = time.monotonic() + block
        vis_ms = int(self.visibility_timeout * 1000)
        while True:
            out: List[Delivery] = []
            for queue in queues:
                if len(out) >= count:
                    break
                proc = keys.processing(queue, consumer)
                for element in SCRIPTS(self.client, "fetch", self._script_keys(queue, consumer),
                                       [consumer, count - len(out), vis_ms]):
                    out.append(_delivery(queue, proc, element))
            if out or time.monotonic() >= deadline:
                self._idle = _IDLE_MIN
                out.sort(key=lambda d: -d.priority)
                return out
            time.sleep(min(self._idle, max(0.0, deadline - time.monotonic())))
            self._idle = min(_IDLE_MAX, self._idle * 2)

    def ack(self, pipe: Pipe, delivery: Delivery) -> None:
        proc, element = delivery.receipt
        pipe.execute_command("LREM", proc, -1, element)

    def _requeue(self, pipe: Pipe, delivery: Delivery, redelivered: bool, on_dead: Callable[[], None]) -> None:
        proc, element = delivery.receipt

        def done(left: Any) -> None:
            if isinstance(left, Exception):
                raise left
            if left:
                why, element = left
                if why == b"malformed":
                    self._bury_malformed(pipe, "requeue", delivery.queue, proc, [element])
                else:
                    self._bury(pipe, delivery.queue, proc, [element])
                on_dead()

        SCRIPTS.queue(pipe, "requeue", [proc] + keys.queue_priorities(delivery.queue)[::-1],
                      [1 if redelivered else 0, self.max_deliveries, element], done)

    def release(self, consumer: str, queues: Sequence[str]) -> int:
        total = 0
        for queue in queues:
            proc = keys.processing(queue, consumer)
            n, _, bad = SCRIPTS(self.client, "return_all", self._script_keys(queue, consumer)[:2]
                                + keys.queue_priorities(queue)[::-1], [consumer, 0, 255])
            total += int(n)
            if bad:
                pipe = ClientPipe(self.client)
                self._bury_malformed(pipe, "release", queue, proc, bad)
                pipe.execute()
        return total

    def held_by(self, consumer: str, queues: Sequence[str]) -> List[Delivery]:
        out = []
        for queue in queues:
            proc = keys.processing(queue, consumer)
            # redis-py types replies as bytes | str; decode_responses is off: bytes
            for element in cast(List[bytes], self.client.lrange(proc, 0, -1)):
                out.append(_delivery(queue, proc, element))
        return out

    def extend(self, consumer: str, queues: Sequence[str]) -> None:
        deadline = int((time.time() + self.visibility_timeout) * 1000)
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            pipe.zadd(keys.consumers(queue), {consumer: deadline})
        pipe.execute()

    def reclaim(self, queues: Sequence[str]) -> int:
        total = 0
        now_ms = int(time.time() * 1000)
        for queue in queues:
            expired = cast(List[bytes], self.client.zrangebyscore(keys.consumers(queue), "-inf", now_ms))  # as above
            for name in expired:
                consumer = name.decode()
                proc = keys.processing(queue, consumer)
                n, dead, bad = SCRIPTS(self.client, "return_all", [keys.consumers(queue), proc]
                                       + keys.queue_priorities(queue)[::-1], [consumer, 1, self.max_deliveries])
                total += int(n)
                if dead or bad:
                    pipe = ClientPipe(self.client)
                    self._bury(pipe, queue, proc, dead)
                    self._bury_malformed(pipe, "reclaim", queue, proc, bad)
                    pipe.execute()
        return total

    def _bury(self, pipe: Pipe, queue: str, proc: str, dead: List[Any]) -> None:
        """Dead-letter the elements a script left in `proc` because they were delivered too often."""
        for element in dead:
            self.bury(pipe, queue, element[2:], "too many deliveries", [("LREM", proc, -1, element)])

    def _bury_malformed(self, pipe: Pipe, kind: str, queue: str, proc: str, bad: List[Any]) -> None:
        """Dead-letter the elements a script left in `proc` because their header is not valid."""
        for element in bad:
            found = _delivery(queue, proc, element)
            self.bury_malformed(pipe, kind, queue, found.data, found.problem or _REFUSED,
                                [("LREM", proc, -1, element)])

    def held(self, queues: Sequence[str]) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for queue in queues:
            consumers = cast(List[bytes], self.client.zrange(keys.consumers(queue), 0, -1))  # as above
            pipe = self.client.pipeline(transaction=False)
            for c in consumers:
                pipe.llen(keys.processing(queue, c.decode()))
            out[queue] = sum(pipe.execute())
        return out

    def length(self, queue: str, priority: int) -> int:
        return self.client.llen(keys.queue(queue, priority))

    def waiting(self, queues: Sequence[str]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            for key in keys.queue_priorities(queue):
                pipe.llen(key)
        return sum(pipe.execute())

    def purge(self, queue: str) -> int:
        pipe = self.client.pipeline(transaction=True)
        for key in keys.queue_priorities(queue):
            pipe.llen(key)
        pipe.zcard(keys.delayed(queue))
        pipe.delete(*keys.queue_priorities(queue), keys.delayed(queue))
        return sum(pipe.execute()[:-1])


def _delivery(queue: str, proc: str, element: bytes) -> Delivery:
    """A processing-list element as a Delivery (2-byte header: count, priority); a malformed one is
    delivered with its problem named, to be dead-lettered rather than crash its consumer."""
    if len(element) < 2 or element[1] > 9:
        return Delivery(element[2:], queue, 0, 0, (proc, element),
                        f"list element without a valid 2-byte header ({element[:8]!r})")
    return Delivery(element[2:], queue, element[1], element[0], (proc, element))
