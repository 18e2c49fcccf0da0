"""Concurrency limits: at most `concurrency_limit` runs of a task at once across every worker (per
`concurrency_key`, when given: a callable of (args, kwargs), or `apply_async(concurrency_key=...)`).

Before a limited task runs, its pool process takes a slot (`concurrency_lua/acquire.lua`): a sorted set
of the task ids running, each with a lease end. When all are taken, the message is parked in its
queue's delayed set (until the earliest lease ends, or `WAIT_MAX` at most) and listed as waiting; the
delivery is acked (settle's CONCURRENCY). When a run ends in any way (`settle.releases`, also a pool
process lost, in the parent), `release.lua` gives its slot back and brings the first waiting message
forward, so it runs at once. A whole worker lost: its slots end with their lease
(max(visibility_timeout, time limit) + 1 s), as its messages are redelivered after visibility_timeout.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .. import keys
from ..lua import Scripts, logged

log = logging.getLogger("minique.worker")
SCRIPTS = Scripts(Path(__file__).parent / "concurrency_lua")
KEY_HEADER = "concurrency_key"   # header: the key a limit counts per (apply_async(concurrency_key=...))
WAIT_MAX = 60.0                  # seconds a parked message waits at most before it looks again

Slot = Tuple[str, str, str]  # the slots, waiting and delayed keys of one limit


def slot_of(task: Any, queue: str, headers: Optional[Dict[str, Any]], args: Any, kwargs: Any) -> Optional[Slot]:
    """The keys of the limit this call of `task` counts against; None when the task has no limit."""
    if not getattr(task, "concurrency_limit", None):
        return None
    key = headers.get(KEY_HEADER) if headers else None
    if key is None and task.concurrency_key is not None:
        key = task.concurrency_key(args, kwargs)
    slots = keys.concurrency(queue, task.name, None if key is None else str(key))
    return slots, slots + ":waiting", keys.delayed(queue)


def acquire(client: Any, slot: Slot, task_id: str, limit: int, lease: float, member: bytes) -> Optional[float]:
    """Take a slot for `task_id`: None when taken, else the time (epoch s) its message is parked until."""
    found = SCRIPTS(client, "acquire", list(slot), [task_id, int(limit), max(1000, round(lease * 1000)), member,
                                                    round(WAIT_MAX * 1000)])
    return None if int(found[0]) == 1 else int(found[1]) / 1000.0


def release(pipe: Any, slot: Slot, task_id: str) -> None:
    """Queue the release of `task_id`'s slot in a pipe (with the task's other writes)."""
    # a failure is logged, not the task's: the slot's lease still ends it
    SCRIPTS.queue(pipe, "release", list(slot), [task_id], logged(log, "release a concurrency slot"))
