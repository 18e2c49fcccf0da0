"""Malformed `minique:events` entries, as any Redis client could add them, for the robustness tests.

`malformed_event_entries()` gives stream-entry field maps (what XADD takes): entries that are not
batches, batches of another version or shape, records of the wrong shape, and events with a wrong
type in each field a reader uses. `good_event_entry()` gives a well-formed entry to interleave.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List

from minique import events, serializers

_WRONG = {"a": [1]}  # a map: the wrong type for every event field (none of them may be a map)


def batch(records: List[Any], headers: Any = None, version: Any = events.VERSION, **extra: Any) -> Dict[str, Any]:
    """A batch map (the unpacked `b` field), as Events.flush writes it."""
    out = {"v": version, "host": "bad@test", "pid": 1, "h": [] if headers is None else headers, "e": records}
    out.update(extra)
    return out


def entry(batch_map: Any) -> Dict[bytes, bytes]:
    return {b"b": serializers.pack(batch_map)}


def good_task_event(uuid: str, kind: str = "task-received", **fields: Any) -> Dict[str, Any]:
    """A raw (code -1) task event with every field a reader uses, each of the right type."""
    return dict({"type": kind, "uuid": uuid, "name": "t.good", "queue": "default", "retries": 0,
                 "root_id": uuid, "parent_id": None, "group_id": None, "sent_at": time.time(), "eta": None,
                 "expires": None, "priority": 0}, **fields)  # (hostname and pid: the batch's)


def good_event_entry(uuid: str, kind: str = "task-received") -> Dict[bytes, bytes]:
    return entry(batch([[-1, time.time(), -1, good_task_event(uuid, kind)]]))


def wrong_type_events() -> List[Dict[str, Any]]:
    """One task event per field that a reader uses, with that field of the wrong type."""
    out = []
    for field in events.FIELD_TYPES:
        if field == "ts":  # (a raw event's time is its record's: see malformed_event_entries)
            continue
        ev = good_task_event("wrong-" + field)
        ev[field] = _WRONG
        out.append(ev)
    out.append(dict(good_task_event("x"), type=7))              # a type that is no string
    out.append({"uuid": "no-type", "hostname": "bad@test"})     # no type at all
    out.append(good_task_event(""))                             # a task event without uuid
    out.append(dict(good_task_event("x"), type="task-failed", message="not bytes"))
    out.append(dict(good_task_event("x"), retries=True))        # a bool is not a number
    return out


def malformed_event_entries() -> List[Dict[bytes, bytes]]:
    """Entries no reader may choke on (each is skipped whole or in part; none holds a good event)."""
    now = time.time()
    header = ["h-1", "t.x", "default", 0, 0, None, None]
    out: List[Dict[bytes, bytes]] = [
        {b"b": b"\xc1\xc1"},                                     # not msgpack (0xc1 is never used)
        {b"x": b"no b field"},
        entry(42),                                               # not a map
        entry([1, 2, 3]),
        entry(batch([[-1, now, -1, good_task_event("v3")]], version=3)),     # another version
        entry(batch([[-1, now, -1, good_task_event("v-str")]], version="4")),
        entry(batch([[-1, now, -1, good_task_event("v-none")]], version=None)),
        entry(batch("records?")),                                # records not a list
        entry(batch([], headers={"h": 1})),                      # headers not a list
        entry(batch([5, "x", None, [1, 2], [0, now, 0, None, "extra"]], headers=[header])),  # records' shapes
        entry(batch([[0, now, 5, [now, None, None, 0]]], headers=[header])),      # header index out of range
        entry(batch([[0, now, "0", [now, None, None, 0]]], headers=[header])),    # header index not a number
        entry(batch([[0, now, -2, [now, None, None, 0]]], headers=[header])),     # negative header index
        entry(batch([[99, now, 0, {}]], headers=[header])),                       # unknown event code
        entry(batch([[1, now, 0, 5]], headers=[header])),                         # task-started's fields
        entry(batch([[8, now, 0, "soon"]], headers=[header])),                    # a runtime that is text
        entry(batch([[7, now, 0, [1]]], headers=[header])),                       # too few fields
        entry(batch([[2, now, 0, 0.1]], headers=[5])),                            # a header that is a number
        entry(batch([[2, now, 0, 0.1]], headers=[[["uuid"], "t.x", "q", 0, 0, None, None]])),  # uuid a list
        entry(batch([[2, now, 0, 0.1]], headers=[["h", "t.x", "q", "zero", 0, None, None]])),  # retries text
        entry(batch([[2, "now", 0, 0.1]], headers=[header])),                     # ts a string
        entry(batch([[-1, _WRONG, -1, good_task_event("wrong-ts")]])),            # ts a map
        entry(batch([[-1, now, -1, {1: 2}]])),                                    # a field name not a string
        entry(batch([[-1, now, -1, "not a map"]])),
        entry(batch([[3, now, 0, {"exception": ["x"], "message": 5}]], headers=[header])),
        entry(batch([[-1, now, -1, good_task_event("x")]], host=["bad"])),        # a hostname that is a list
        entry(batch([[-1, now, -1, good_task_event("x")]], pid="1")),             # a pid that is text
    ]
    out.extend(entry(batch([[-1, now, -1, ev]])) for ev in wrong_type_events())
    return out
