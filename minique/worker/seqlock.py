"""A seqlock over a region of shared memory: one writer, any number of readers, no lock.

The worker parent and its pool processes share mmaps (the rate-limit table is one). A region
holds a sequence number, a payload length and the payload. The writer makes the sequence odd, writes the
payload and its length, then makes the sequence even again; a reader copies the payload between two
reads of the sequence and keeps the copy only if the sequence was even and did not move, so it
never takes a half-written payload for a whole one. Writers must not overlap (one process writes a
region, or the caller holds a lock).
"""
from __future__ import annotations

import struct
from typing import Any, Optional, cast

_HEAD = struct.Struct("<QI")  # sequence (odd while a write is under way), payload length


class SeqLock:
    """A length-prefixed payload under a sequence number in `capacity` bytes of `buffer` at `offset`."""

    HEADER = _HEAD.size  # bytes of the region the sequence and length take; the payload gets the rest

    def __init__(self, buffer: Any, offset: int, capacity: int):
        if capacity <= self.HEADER:
            raise ValueError(f"a seqlock region needs more than {self.HEADER} bytes, not {capacity}")
        self.buf = buffer
        self.off = offset
        self.max_payload = capacity - self.HEADER
        self._data = offset + self.HEADER

    def seq(self) -> int:
        """The sequence number: it changes with every write (cheap: see whether to read again)."""
        return cast("int", _HEAD.unpack_from(self.buf, self.off)[0])

    def write(self, payload: bytes) -> None:
        """Replace the payload (ValueError when it does not fit)."""
        size = len(payload)
        if size > self.max_payload:
            raise ValueError(f"payload of {size} bytes does not fit in {self.max_payload}")
        buf, off = self.buf, self.off  # (on a pool process's per-task path: kept to a few operations)
        odd = _HEAD.unpack_from(buf, off)[0] | 1
        _HEAD.pack_into(buf, off, odd, 0)                       # odd: a write is under way
        buf[self._data:self._data + size] = payload
        _HEAD.pack_into(buf, off, odd + 1, size)                # even again, and not as before

    def clear(self) -> None:
        """Make the payload empty (a write of nothing, without touching the payload's bytes)."""
        buf, off = self.buf, self.off
        odd = _HEAD.unpack_from(buf, off)[0] | 1
        _HEAD.pack_into(buf, off, odd, 0)
        _HEAD.pack_into(buf, off, odd + 1, 0)

    def read(self, attempts: int = 1) -> Optional[bytes]:
        """The payload, or None if every one of `attempts` reads met a write (try again later)."""
        for _ in range(attempts):
            seq, size = _HEAD.unpack_from(self.buf, self.off)
            if seq & 1:
                continue
            payload = bytes(self.buf[self._data:self._data + size])
            if self.seq() == seq:
                return payload
        return None
