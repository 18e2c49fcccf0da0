"""Shared memory between the worker parent and each pool child: what the child is doing now.

The child writes, the parent reads: no system call per task. A slot holds the task
running now (for hard time limits, `inspect active`, and a child lost mid-task), under a
seqlock so the parent never reads half a record; the tasks that finished but whose writes
(results, and early acks that wait to share a write: see worker/outbox.py) are not yet
sent to Redis, so a crash in that window is seen too; plus counters and a control
sequence number the parent bumps when it has news (revocations) for the child.
"""
from __future__ import annotations

import mmap
import struct
import time
from typing import Any, List, NamedTuple, Optional, Tuple, cast

from .. import serializers
from .seqlock import SeqLock


class Running(NamedTuple):
    """What a slot records of a task it runs (and keeps until the task's writes are sent)."""

    task_id: str
    name: str
    data: Optional[bytes]   # the message's wire bytes (None when too large for the slot)
    acks_late: bool
    queue: str
    ignore_result: bool


# Head of a slot. Each side writes only its own fields, never a read-modify-write of the other's.
_U64, _U32 = struct.Struct("<Q"), struct.Struct("<I")
PROCESSED_AT, PREV_AT, CTL_AT, STOP_AT = 0, 8, 12, 16  # processed, prev_len (child); ctl_seq, stop (parent)
HEAD = 24
PAYLOAD = 8192     # the running task's record, under a seqlock: [started_at, hard_limit, *Running]
UNFLUSHED = 2 * PAYLOAD  # records of finished tasks not yet flushed, one after another
TARGET = 128  # the task id a revoke(terminate=True) aims at (parent writes, child reads)
SLOT_SIZE = HEAD + PAYLOAD + UNFLUSHED + TARGET
_IDLE = b""
_KEEP_DATA = PAYLOAD - 512  # a message up to this size is kept whole in the record


class Slot:
    """One pool process's view in a shared mmap (works across fork, and between threads)."""

    def __init__(self, buf: mmap.mmap, offset: int):
        self.buf = buf
        self.off = offset
        self.current = SeqLock(buf, offset + HEAD, PAYLOAD)
        self._record = _IDLE  # the child's copy of the running record
        self._processed = self._prev_len = 0  # the child's own copies of its fields
        self.retired = 0  # (parent side) tasks processed by the slot's earlier processes: the worker's total keeps them

    # --- child side ---------------------------------------------------------------------------------
    def begin(self, msg: Any, delivery: Any, hard_limit: float, acks_late: bool) -> None:
        data = delivery.data if len(delivery.data) < _KEEP_DATA else None
        record = serializers.pack((time.time(), hard_limit, msg.id, msg.task, data, acks_late, delivery.queue,
                                   msg.ignore_result))
        if len(record) > self.current.max_payload:
            record = serializers.pack((time.time(), hard_limit, msg.id, msg.task, None, acks_late, delivery.queue,
                                       msg.ignore_result))
        self.current.write(record)
        self._record = record

    def end(self) -> bool:
        """The task returned: add it to 'finished, not flushed' until flushed(). Returns whether a
        next one surely fits there too; when not, the caller flushes before the next task ends."""
        record, prev_len = self._record, self._prev_len
        if prev_len + len(record) <= UNFLUSHED:  # (always, when the caller heeds the return value)
            at = self.off + HEAD + PAYLOAD + prev_len
            self.buf[at:at + len(record)] = record
            prev_len = self._prev_len = prev_len + len(record)
            _U32.pack_into(self.buf, self.off + PREV_AT, prev_len)  # listed as finished before no longer running
        self._processed += 1
        self.current.clear()
        self._record = _IDLE
        _U64.pack_into(self.buf, self.off + PROCESSED_AT, self._processed)
        return prev_len + PAYLOAD <= UNFLUSHED

    def flushed(self) -> None:
        """Everything the finished tasks wrote is sent to Redis."""
        if self._prev_len:
            self._prev_len = 0
            _U32.pack_into(self.buf, self.off + PREV_AT, 0)

    def ctl_seq(self) -> int:
        return cast("int", _U32.unpack_from(self.buf, self.off + CTL_AT)[0])

    def stop_requested(self) -> bool:
        return bool(_U32.unpack_from(self.buf, self.off + STOP_AT)[0])

    # --- parent side --------------------------------------------------------------------------------
    def reset(self) -> None:
        self.retired += _U64.unpack_from(self.buf, self.off + PROCESSED_AT)[0]
        self.buf[self.off:self.off + HEAD] = bytes(HEAD)
        self.current.clear()
        self._record = _IDLE
        self._processed = self._prev_len = 0
        self.set_terminate(None)

    def set_terminate(self, task_id: Optional[str]) -> None:
        """Name the running task a revoke(terminate=True) is for, before signalling the child."""
        raw = (task_id or "").encode()[:TARGET - 1]
        base = self.off + HEAD + PAYLOAD + UNFLUSHED
        self.buf[base:base + TARGET] = raw + b"\0" * (TARGET - len(raw))

    def terminate_target(self) -> Optional[str]:
        base = self.off + HEAD + PAYLOAD + UNFLUSHED
        raw = bytes(self.buf[base:base + TARGET]).split(b"\0", 1)[0]
        return raw.decode() if raw else None

    def bump_ctl(self) -> None:
        _U32.pack_into(self.buf, self.off + CTL_AT, (self.ctl_seq() + 1) & 0xFFFFFFFF)

    def request_stop(self) -> None:
        _U32.pack_into(self.buf, self.off + STOP_AT, 1)

    def running(self) -> Tuple[float, float, Optional[Running]]:
        """(started_at, hard_limit, record) of the task running now; (0.0, 0.0, None) when idle (or
        when the child kept rewriting the record while it was read: the next look sees it)."""
        record = self.current.read(attempts=3)
        if not record:
            return 0.0, 0.0, None
        started, hard, *fields = serializers.unpack(record)
        return started, hard, Running(*fields)

    def unflushed(self) -> List[Running]:
        """The finished tasks whose writes may not have reached Redis, oldest first."""
        prev_len = _U32.unpack_from(self.buf, self.off + PREV_AT)[0]
        if not prev_len:
            return []
        at = self.off + HEAD + PAYLOAD
        try:
            return [Running(*r[2:]) for r in serializers.unpack_all(bytes(self.buf[at:at + prev_len]))]
        except Exception:  # noqa: BLE001 - a child killed half-way through appending: the whole ones only
            return []

    @property
    def processed(self) -> int:
        """Tasks processed by the slot's current process."""
        return cast("int", _U64.unpack_from(self.buf, self.off + PROCESSED_AT)[0])

    @property
    def total(self) -> int:
        """Tasks processed in this slot, by its current process and the ones before it (a replaced process's
        count is not lost: the worker's `processed` never goes down)."""
        return self.retired + self.processed


class SlotTable:
    """Slots for up to `n` pool processes in one anonymous shared mapping (made before forking)."""

    def __init__(self, n: int):
        self.n = n
        self.buf = mmap.mmap(-1, max(1, n) * SLOT_SIZE)
        self.slots = [Slot(self.buf, i * SLOT_SIZE) for i in range(n)]

    def __getitem__(self, i: int) -> Slot:
        return self.slots[i]
