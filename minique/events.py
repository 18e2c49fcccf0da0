"""Task and worker events, batched into one capped Redis stream (what the dashboard reads).

A worker appends events to a local buffer and writes them as one stream entry per
batch (at most every 0.5 s or 200 events), inside a pipeline it flushes anyway, so
events cost no extra round trip on the task path.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import keys, serializers

MAXLEN = 10000          # stream entries kept (each a batch of events)
BATCH_EVENTS = 200
BATCH_SECONDS = 0.5


class Events:
    """Buffer of events from one process."""

    def __init__(self, hostname: str):
        self.hostname = hostname
        self.buffer: List[Dict[str, Any]] = []
        self.first = 0.0

    def raw(self, type: str, **fields: Any) -> None:
        if not self.buffer:
            self.first = time.monotonic()
        fields["type"] = type
        fields["ts"] = time.time()
        self.buffer.append(fields)

    def task(self, type: str, msg: Any, **fields: Any) -> None:
        self.raw(type, uuid=msg.id, name=msg.task, queue=msg.queue, retries=msg.retries,
                 root_id=msg.root_id, parent_id=msg.parent_id, group_id=msg.group_id, **fields)

    def maybe_flush(self, pipe: Any) -> None:
        if self.buffer and (len(self.buffer) >= BATCH_EVENTS or time.monotonic() - self.first >= BATCH_SECONDS):
            self.flush(pipe)

    def flush(self, pipe: Any) -> None:
        if self.buffer:
            pipe.xadd(keys.EVENTS, {"b": serializers.pack(self.buffer)}, maxlen=MAXLEN, approximate=True)
            self.buffer = []


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
            out.extend(serializers.unpack(fields[b"b"]))
    return last_id, iter(out)
