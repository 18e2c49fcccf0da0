"""Shared memory between the worker parent and each pool child: what the child is doing now.

The child writes, the parent reads: no system call per task. A slot holds the task
running now (for hard time limits, `inspect active`, and a child lost mid-task), under a
seqlock so the parent never reads half a record; the tasks that finished but whose writes
(results, and early acks that wait to share a write: see worker/outbox.py) are not yet
sent to Redis, so a crash in that window is seen too; plus counters and a control
sequence number the parent bumps when it has news (revocations) for the child. A process of the
asyncio pool runs many tasks at once: its slot also has `Lanes`, one record per task it runs.
"""
from __future__ import annotations

import heapq
import mmap
import struct
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, cast

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
        self.lanes: Optional[Lanes] = None  # the asyncio pool's: a record per task the process runs at once

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

    def count_processed(self) -> None:
        """One more task ended (the asyncio pool's lanes count theirs here)."""
        self._processed += 1
        _U64.pack_into(self.buf, self.off + PROCESSED_AT, self._processed)

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
        if self.lanes is not None:
            self.lanes.reset()

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

    def tasks(self) -> List[Tuple[float, float, Running]]:
        """(started_at, hard_limit, record) of every task the process runs now (one, or none, but in
        the asyncio pool's processes: one per lane in use whose body has not ended)."""
        started, hard, record = self.running()
        out = [(started, hard, record)] if record is not None else []
        if self.lanes is not None:
            out += [(lane.started, lane.hard, lane.record) for lane in self.lanes.read() if not lane.ended]
        return out

    def unflushed(self) -> List[Running]:
        """The finished tasks whose writes may not have reached Redis, oldest first."""
        ended = [lane.record for lane in self.lanes.read() if lane.ended] if self.lanes is not None else []
        prev_len = _U32.unpack_from(self.buf, self.off + PREV_AT)[0]
        if not prev_len:
            return ended
        at = self.off + HEAD + PAYLOAD
        try:
            return [Running(*r[2:]) for r in serializers.unpack_all(bytes(self.buf[at:at + prev_len]))] + ended
        except Exception:  # noqa: BLE001 - a child killed half-way through appending: the whole ones only
            return ended

    @property
    def processed(self) -> int:
        """Tasks processed by the slot's current process."""
        return cast("int", _U64.unpack_from(self.buf, self.off + PROCESSED_AT)[0])

    @property
    def total(self) -> int:
        """Tasks processed in this slot, by its current process and the ones before it (a replaced process's
        count is not lost: the worker's `processed` never goes down)."""
        return self.retired + self.processed


# The asyncio pool's lanes: a head [high u32 (lanes used so far), hard u32 (running lanes with a hard
# time limit)], then per lane a record under a seqlock and the id a revoke(terminate=True) aims at.
LANES_HEAD = 8
LANE = 2048
LANE_TARGET = 64
LANE_SIZE = LANE + LANE_TARGET
_LANE_KEEP = LANE - 512


class Lane(NamedTuple):
    """What the parent reads of one lane."""

    started: float
    hard: float
    ended: bool        # the body ended; the record stays until the task's writes are sent
    record: Running


class Lanes:
    """The records of the tasks one asyncio-pool process runs at once: one lane per task, taken when
    it begins (the lowest free one) and freed once its writes are sent, as a slot's single record is.
    The parent reads only the lanes below the high-water mark the child keeps."""

    def __init__(self, buf: mmap.mmap, offset: int, n: int, slot: "Slot"):
        self.buf, self.off, self.n = buf, offset, n
        self.slot = slot
        self._locks: Dict[int, SeqLock] = {}
        # the child's side
        self._free = list(range(n))                  # a heap: the lowest free lane first
        self._taken: Dict[int, Tuple[int, Tuple[Any, ...]]] = {}  # id(delivery) -> (lane, record fields)
        self._ended: List[int] = []
        self._high = self._hard = 0

    def _lock(self, lane: int) -> SeqLock:
        lock = self._locks.get(lane)
        if lock is None:
            lock = self._locks[lane] = SeqLock(self.buf, self.off + LANES_HEAD + lane * LANE_SIZE, LANE)
        return lock

    # --- child side ---------------------------------------------------------------------------------
    def begin(self, msg: Any, delivery: Any, hard_limit: float, acks_late: bool) -> None:
        lane = heapq.heappop(self._free)
        target = self.off + LANES_HEAD + lane * LANE_SIZE + LANE
        if self.buf[target]:  # a terminate aimed at the lane's last task (written before this task is named)
            self.buf[target:target + LANE_TARGET] = bytes(LANE_TARGET)
        data = delivery.data if len(delivery.data) < _LANE_KEEP else None
        fields = (time.time(), hard_limit, False, msg.id, msg.task, data, acks_late, delivery.queue,
                  msg.ignore_result)
        self._lock(lane).write(serializers.pack(fields))
        self._taken[id(delivery)] = lane, fields
        if lane >= self._high:
            self._high = lane + 1
            _U32.pack_into(self.buf, self.off, self._high)
        if hard_limit:
            self._hard += 1
            _U32.pack_into(self.buf, self.off + 4, self._hard)

    def end(self, delivery: Any) -> None:
        """The task's body ended: its lane says so until its writes are sent (flushed)."""
        taken = self._taken.pop(id(delivery), None)
        if taken is None:
            return
        lane, fields = taken
        self._lock(lane).write(serializers.pack(fields[:2] + (True,) + fields[3:]))
        self._ended.append(lane)
        self.slot.count_processed()
        if fields[1]:
            self._hard -= 1
            _U32.pack_into(self.buf, self.off + 4, self._hard)

    def flushed(self) -> None:
        """Everything the ended tasks wrote is sent to Redis: their lanes are free."""
        for lane in self._ended:
            self._lock(lane).clear()
            heapq.heappush(self._free, lane)
        self._ended.clear()
        if not self._taken and self._high:
            self._high = 0
            _U32.pack_into(self.buf, self.off, 0)

    def lane_of(self, delivery: Any) -> Optional[int]:
        taken = self._taken.get(id(delivery))
        return taken[0] if taken is not None else None

    def terminate_target(self, lane: int) -> Optional[str]:
        at = self.off + LANES_HEAD + lane * LANE_SIZE + LANE
        raw = bytes(self.buf[at:at + LANE_TARGET]).split(b"\0", 1)[0]
        return raw.decode() if raw else None

    # --- parent side --------------------------------------------------------------------------------
    def high(self) -> int:
        return cast("int", _U32.unpack_from(self.buf, self.off)[0])

    def hard_limited(self) -> int:
        """How many running tasks have a hard time limit (0: the parent need not look)."""
        return cast("int", _U32.unpack_from(self.buf, self.off + 4)[0])

    def read(self) -> List[Lane]:
        """Every lane in use: running, or ended with writes not yet sent."""
        out = []
        for lane in range(min(self.high(), self.n)):
            raw = self._lock(lane).read(attempts=3)
            if raw:
                started, hard, ended, *fields = serializers.unpack(raw)
                out.append(Lane(started, hard, ended, Running(*fields)))
        return out

    def lane_running(self, task_id: str) -> Optional[int]:
        for lane in range(min(self.high(), self.n)):
            raw = self._lock(lane).read(attempts=3)
            if raw and serializers.unpack(raw)[3] == task_id:
                return lane
        return None

    def set_terminate(self, lane: int, task_id: Optional[str]) -> None:
        raw = (task_id or "").encode()[:LANE_TARGET - 1]
        at = self.off + LANES_HEAD + lane * LANE_SIZE + LANE
        self.buf[at:at + LANE_TARGET] = raw + b"\0" * (LANE_TARGET - len(raw))

    def reset(self) -> None:
        """A new process takes the slot: the lanes its predecessor used are cleared."""
        used = LANES_HEAD + min(self.high(), self.n) * LANE_SIZE  # (pages never used stay untouched)
        self.buf[self.off:self.off + used] = bytes(used)
        self._free = list(range(self.n))
        self._taken.clear()
        self._ended.clear()
        self._high = self._hard = 0


class SlotTable:
    """Slots for up to `n` pool processes in one anonymous shared mapping (made before forking); with
    `lanes`, each slot also has that many lanes (the asyncio pool: tasks at once per process)."""

    def __init__(self, n: int, lanes: int = 0):
        self.n = n
        size = SLOT_SIZE + (LANES_HEAD + lanes * LANE_SIZE if lanes else 0)
        self.buf = mmap.mmap(-1, max(1, n) * size)
        self.slots = [Slot(self.buf, i * size) for i in range(n)]
        if lanes:
            for i, slot in enumerate(self.slots):
                slot.lanes = Lanes(self.buf, i * size + SLOT_SIZE, lanes, slot)

    def __getitem__(self, i: int) -> Slot:
        return self.slots[i]
