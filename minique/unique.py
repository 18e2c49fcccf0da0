"""Unique tasks: a second send while the first waits or runs gives the first's AsyncResult.

`apply_async(..., unique_key=..., unique_for=seconds, unique_until="finished"|"started")`, or the task
options `unique=True` (the key is the task's name and arguments), `unique_for`, `unique_until`. The
client claims the key before it sends (SET NX with a time to live, `unique_lua/claim.lua`); the key
holds the task's id, and the message carries the key in its headers. A worker releases it
(`unique_lua/release.lua`: only if it still holds that id) when the task's run is over for good
(`settle.releases`: done, failed, revoked, expired, dead-lettered; not a retry, which keeps it), or
when it starts with `unique_until="started"`. A key whose task was lost expires after `unique_for`.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional

from . import keys
from .lua import Scripts, logged

log = logging.getLogger("minique.unique")
SCRIPTS = Scripts(Path(__file__).parent / "unique_lua")
HEADER = "unique_key"          # the message's unique key (set by the client)
UNTIL_HEADER = "unique_until"  # present (value "started") when the key is released as the task starts
MODES = ("finished", "started")
DEFAULT_FOR = 3600.0           # seconds a key holds at most when neither the call nor the task says


def key_for(name: str, args: Any, kwargs: Any) -> str:
    """The unique key of `unique=True`: the task's name and a digest of its arguments."""
    blob = json.dumps([list(args or ()), dict(kwargs or {})], sort_keys=True, default=repr, separators=(",", ":"))
    return f"{name}:{hashlib.sha1(blob.encode()).hexdigest()}"


def claim(client: Any, key: str, task_id: str, ttl: float) -> Optional[str]:
    """Claim `key` for `task_id`; None when claimed, else the id of the task that holds it."""
    holder = SCRIPTS(client, "claim", [keys.unique(key)], [task_id, max(1, int(round(ttl)))])
    if not holder:
        return None
    return holder.decode() if isinstance(holder, bytes) else str(holder)


def release(pipe: Any, key: str, task_id: str) -> None:
    """Queue the release of `key` held by `task_id` in a pipe (with the task's other writes)."""
    # a failure is logged, not the task's: the key expires after unique_for
    SCRIPTS.queue(pipe, "release", [keys.unique(key)], [task_id], logged(log, "release a unique key"))


def release_now(client: Any, key: str, task_id: str) -> None:
    SCRIPTS(client, "release", [keys.unique(key)], [task_id])


def count_duplicate(client: Any, name: str) -> None:
    """Count a send that gave the holder's result (the dashboard's minique_tasks_deduplicated_total)."""
    try:
        client.hincrby(keys.DEDUPLICATED, name, 1)
    except Exception as exc:  # noqa: BLE001 - a count is not worth a failed send
        log.debug("could not count a deduplicated send of %s: %s", name, exc)
