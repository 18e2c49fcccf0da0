"""Task and worker events, batched into one capped Redis stream (what the dashboard reads).

Events are on by default (`worker_send_task_events = True`, Celery's name; `-E` turns
them on, `--without-events` off). A pool process appends events to a local buffer and
writes them as one stream entry per batch, inside the pipeline it flushes anyway, so
events cost no extra round trip on the task path. A batch is written when it reaches
200 events or 0.5 s, or when the process has run everything it had prefetched (so
the last events never wait for the next message).

Task events (Celery's names): task-received, task-started, task-succeeded,
task-failed, task-retried, task-revoked, task-rejected. Each carries uuid, name,
queue, retries, root_id, parent_id, group_id, hostname, pid and ts (epoch seconds);
task-received adds sent_at/eta/expires/priority, task-started args/kwargs (bounded
reprs), task-succeeded runtime, task-failed exception and, so the failure can be
re-sent from the dashboard, the message body (encoded [args, kwargs], when under
MAX_BODY bytes) with its content type and priority. Worker events: worker-online,
worker-heartbeat (every worker_heartbeat_interval), worker-offline.

The same `Events` object is the executor's hook for two more things that must be
cheap per task: the shared-memory metrics counters (metrics.Recorder) and rate limits
(worker.observe.RateLimiter), so it exists even when events are off.
"""
from __future__ import annotations

import os
import reprlib
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import keys, serializers

MAXLEN = 10000          # stream entries kept (each a batch of events)
BATCH_EVENTS = 200
BATCH_SECONDS = 0.5
MAX_BODY = 16 * 1024    # bytes of message body carried by task-failed (larger: not re-sendable from the dashboard)

_repr = reprlib.Repr()
_repr.maxstring = 120
_repr.maxother = 120
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 16
_repr.maxlevel = 4


_SCALARS = frozenset({int, float, bool, type(None)})


def _small(value: Any) -> bool:
    """A scalar, or a short string: its plain repr is short and cheap."""
    t = type(value)
    return t in _SCALARS or (t is str and len(value) <= 100)


def short_repr(value: Any) -> str:
    """A bounded repr: its cost does not grow with the size of the value."""
    t = type(value)
    if t is list or t is tuple:  # the common case, args: plain repr when small (5x cheaper than reprlib)
        if len(value) <= 8 and all(map(_small, value)):
            return repr(value)
    elif t is dict and len(value) <= 8 and all(map(_small, value.values())) and all(map(_small, value)):
        return repr(value)
    try:
        return _repr.repr(value)[:512]
    except Exception:  # noqa: BLE001 - a broken __repr__ must not fail the task
        return f"<unrepresentable {type(value).__name__}>"


class Events:
    """Buffer of events from one process (one pool process or thread, or the worker parent)."""

    def __init__(self, hostname: str, send: bool = True, recorder: Any = None, limiter: Any = None):
        self.hostname = hostname
        self.send = send
        self.recorder = recorder
        self.limiter = limiter
        self.pid = os.getpid()
        self.consumer: Any = None   # the pool process's Consumer (its prefetch buffer says when it goes idle)
        self.buffer: List[Dict[str, Any]] = []
        self.first = 0.0

    def raw(self, type: str, **fields: Any) -> None:
        rec = self.recorder
        if rec is not None and type == "task-rejected" and fields.get("dead", True):
            rec.dead_letter(fields.get("queue") or "", fields.get("reason") or "")
        if self.send:
            self._append(type, fields)

    def _append(self, type: str, fields: Dict[str, Any]) -> None:
        if not self.buffer:
            self.first = time.monotonic()
        fields["type"] = type
        fields["ts"] = time.time()
        fields.setdefault("pid", self.pid)
        self.buffer.append(fields)

    def task(self, type: str, msg: Any, **fields: Any) -> None:
        rec = self.recorder
        if rec is not None:
            state = _STATE.get(type)
            if state is not None:
                rec.event(state, msg.task, msg.queue, msg, fields.get("runtime"))
                if type == "task-rejected" and fields.get("dead"):
                    rec.dead_letter(msg.queue, fields.get("reason") or "rejected")
        if not self.send:
            return
        if type == "task-started":
            if "args" in fields and not isinstance(fields["args"], str):
                fields["args"] = short_repr(fields["args"])
            if "kwargs" in fields and not isinstance(fields["kwargs"], str):
                fields["kwargs"] = short_repr(fields["kwargs"])
        elif type == "task-received":
            fields.update(sent_at=msg.sent_at, eta=msg.eta, expires=msg.expires, priority=msg.priority)
        elif type == "task-failed" and len(msg.body) <= MAX_BODY:
            fields.update(body=msg.body, content_type=msg.content_type, priority=msg.priority)
        fields.update(uuid=msg.id, name=msg.task, queue=msg.queue, retries=msg.retries, root_id=msg.root_id,
                      parent_id=msg.parent_id, group_id=msg.group_id)
        self._append(type, fields)

    def received(self, msg: Any, batch: Any = None) -> None:
        """task-received, just before the task runs; waits here for the task's rate limit, if any
        (after flushing `batch`, so earlier results are not held back by the wait)."""
        self.task("task-received", msg, hostname=self.hostname)
        if self.limiter is not None:
            self.limiter.acquire(msg.task, batch)

    def worker(self, type: str, **fields: Any) -> None:
        if self.send:
            self._append(type, dict(fields, hostname=self.hostname))

    def maybe_flush(self, pipe: Any) -> None:
        """Called after each task with the pipeline the consumer flushes next: add the batch to it when
        it is big or old enough, or when the consumer has nothing prefetched left (it is about to wait
        for messages: the events must not wait with it)."""
        if self.buffer and (len(self.buffer) >= BATCH_EVENTS or time.monotonic() - self.first >= BATCH_SECONDS
                            or (self.consumer is not None and not self.consumer.buffer)):
            self.flush(pipe)

    def flush(self, pipe: Any) -> None:
        if self.buffer:
            pipe.xadd(keys.EVENTS, {"b": serializers.pack(self.buffer)}, maxlen=MAXLEN, approximate=True)
            self.buffer = []


_STATE = {"task-received": 0, "task-started": 1, "task-succeeded": 2, "task-failed": 3, "task-retried": 4,
          "task-revoked": 5, "task-rejected": 6}


def read(client: Any, last_id: str = "0-0", count: int = 100, block: Optional[float] = None
         ) -> Tuple[str, Iterator[Dict[str, Any]]]:
    """Events after `last_id`: (new last id, events in order)."""
    kwargs = {"count": count}
    if block:
        kwargs["block"] = int(block * 1000)
    found = client.xread({keys.EVENTS: last_id}, **kwargs)
    out: List[Dict[str, Any]] = []
    for _, entries in found or ():
        for entry_id, fields in entries:
            last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            try:
                out.extend(serializers.unpack(fields[b"b"]))
            except Exception:  # noqa: BLE001 - one bad entry must not stop a reader
                continue
    return last_id, iter(out)
