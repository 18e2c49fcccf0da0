"""Shared memory between the worker parent and each pool child: what the child is doing now.

The child writes, the parent reads: no system call per task. A slot holds the task
running now (for hard time limits and for a child lost mid-task) and the tasks that
finished but whose writes (results, and early acks that waited to share a write:
see Batch.defer) are not yet sent to Redis, so a crash in that window is seen too,
plus counters and a control sequence number the parent bumps when it has news
(revocations) for the child.
"""
from __future__ import annotations

import mmap
import struct
import time
from typing import Any, List, Optional, Tuple

from .. import serializers

_HEAD = struct.Struct("<ddQIIII")  # started_at, hard_limit, processed, ctl_seq, stop, cur_len, prev_len
PAYLOAD = 8192     # the running task's record
UNFLUSHED = 2 * PAYLOAD  # records of finished tasks not yet flushed, one after another
TARGET = 128  # the task id a revoke(terminate=True) aims at (parent writes, child reads)
SLOT_SIZE = _HEAD.size + PAYLOAD + UNFLUSHED + TARGET


class Slot:
    """One pool process's view in a shared mmap (works across fork, and between threads)."""

    def __init__(self, buf: mmap.mmap, offset: int):
        self.buf = buf
        self.off = offset
        self._cur: Optional[bytes] = None

    # --- child side ---------------------------------------------------------------------------------
    def begin(self, msg: Any, delivery: Any, hard_limit: float, acks_late: bool) -> None:
        data = delivery.data if len(delivery.data) < PAYLOAD - 512 else None
        payload = serializers.pack([msg.id, msg.task, data, acks_late, delivery.queue, msg.ignore_result])
        if len(payload) > PAYLOAD:
            payload = serializers.pack([msg.id, msg.task, None, acks_late, delivery.queue, msg.ignore_result])
        base = self.off + _HEAD.size
        self.buf[base:base + len(payload)] = payload
        self._set(started_at=time.time(), hard_limit=hard_limit, cur_len=len(payload))

    def end(self) -> bool:
        """The task returned: add it to 'finished, not flushed' until flushed(). Returns whether a
        next one surely fits there too; when not, the caller flushes before the next task ends."""
        started, hard, processed, seq, stop, cur_len, prev_len = self._head()
        at = self.off + _HEAD.size
        if prev_len + cur_len <= UNFLUSHED:  # (always, when the caller heeds the return value)
            self.buf[at + PAYLOAD + prev_len:at + PAYLOAD + prev_len + cur_len] = self.buf[at:at + cur_len]
            prev_len += cur_len
        _HEAD.pack_into(self.buf, self.off, 0.0, 0.0, processed + 1, seq, stop, 0, prev_len)
        return prev_len + PAYLOAD <= UNFLUSHED

    def flushed(self) -> None:
        """Everything the finished tasks wrote is sent to Redis."""
        started, hard, processed, seq, stop, cur_len, prev_len = self._head()
        if prev_len:
            _HEAD.pack_into(self.buf, self.off, started, hard, processed, seq, stop, cur_len, 0)

    def ctl_seq(self) -> int:
        return _HEAD.unpack_from(self.buf, self.off)[3]

    def stop_requested(self) -> bool:
        return bool(_HEAD.unpack_from(self.buf, self.off)[4])

    # --- parent side --------------------------------------------------------------------------------
    def reset(self) -> None:
        _HEAD.pack_into(self.buf, self.off, 0.0, 0.0, 0, 0, 0, 0, 0)
        self.set_terminate(None)

    def set_terminate(self, task_id: Optional[str]) -> None:
        """Name the running task a revoke(terminate=True) is for, before signalling the child."""
        raw = (task_id or "").encode()[:TARGET - 1]
        base = self.off + _HEAD.size + PAYLOAD + UNFLUSHED
        self.buf[base:base + TARGET] = raw + b"\0" * (TARGET - len(raw))

    def terminate_target(self) -> Optional[str]:
        base = self.off + _HEAD.size + PAYLOAD + UNFLUSHED
        raw = bytes(self.buf[base:base + TARGET]).split(b"\0", 1)[0]
        return raw.decode() if raw else None

    def bump_ctl(self) -> None:
        head = list(self._head())
        head[3] = (head[3] + 1) & 0xFFFFFFFF
        _HEAD.pack_into(self.buf, self.off, *head)

    def request_stop(self) -> None:
        head = list(self._head())
        head[4] = 1
        _HEAD.pack_into(self.buf, self.off, *head)

    def running(self) -> Tuple[float, float, Optional[list]]:
        """(started_at, hard_limit, payload) of the task running now; started_at 0 when idle."""
        started, hard, _, _, _, cur_len, _ = self._head()
        if not started or not cur_len:
            return 0.0, 0.0, None
        return started, hard, self._payload(0, cur_len)

    def unflushed(self) -> List[list]:
        """The finished tasks whose writes may not have reached Redis, oldest first."""
        *_, prev_len = self._head()
        if not prev_len:
            return []
        base = self.off + _HEAD.size + PAYLOAD
        try:
            return serializers.unpack_all(bytes(self.buf[base:base + prev_len]))
        except Exception:
            return []

    @property
    def processed(self) -> int:
        return self._head()[2]

    # --- internals ----------------------------------------------------------------------------------
    def _head(self) -> tuple:
        return _HEAD.unpack_from(self.buf, self.off)

    def _set(self, started_at: float, hard_limit: float, cur_len: int) -> None:
        _, _, processed, seq, stop, _, prev_len = self._head()
        _HEAD.pack_into(self.buf, self.off, started_at, hard_limit, processed, seq, stop, cur_len, prev_len)

    def _payload(self, at: int, length: int) -> Optional[list]:
        base = self.off + _HEAD.size + at
        try:
            return serializers.unpack(bytes(self.buf[base:base + length]))
        except Exception:
            return None


class SlotTable:
    """Slots for up to `n` pool processes in one anonymous shared mapping (made before forking)."""

    def __init__(self, n: int):
        self.n = n
        self.buf = mmap.mmap(-1, max(1, n) * SLOT_SIZE)
        self.slots = [Slot(self.buf, i * SLOT_SIZE) for i in range(n)]

    def __getitem__(self, i: int) -> Slot:
        return self.slots[i]
