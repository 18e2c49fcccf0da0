"""The seqlock over shared memory (pure: no Redis, no processes)."""
import mmap

import pytest

from minique.worker.seqlock import SeqLock


class Interleaved(bytearray):
    """A buffer that runs `during_copy` once, in the middle of the next payload copy (the write's
    payload going in, or a read's coming out): another process's access between two halves."""

    def __init__(self, size, data_at):
        super().__init__(size)
        self.data_at = data_at
        self.during_copy = None

    def _maybe_interleave(self, key):
        hook = self.during_copy
        if hook is not None and isinstance(key, slice) and key.start == self.data_at:
            self.during_copy = None
            hook()

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._maybe_interleave(key)

    def __getitem__(self, key):
        out = super().__getitem__(key)
        self._maybe_interleave(key)
        return out


def test_round_trip_in_a_region_of_a_shared_map():
    buf = mmap.mmap(-1, 4096)
    first, second = SeqLock(buf, 0, 100), SeqLock(buf, 100, 200)
    assert first.read() == b"" and second.read() == b""
    first.write(b"one")
    second.write(b"x" * second.max_payload)
    first.write(b"1")                                   # shorter than before: the old tail is not read
    assert first.read() == b"1" and second.read() == b"x" * (200 - SeqLock.HEADER)
    assert first.seq() % 2 == 0 and first.seq() != 0


def test_a_payload_that_does_not_fit_is_refused_and_the_old_one_kept():
    region = SeqLock(mmap.mmap(-1, 64), 0, 64)
    region.write(b"kept")
    with pytest.raises(ValueError, match="does not fit"):
        region.write(b"y" * (64 - SeqLock.HEADER + 1))
    assert region.read() == b"kept"
    with pytest.raises(ValueError):
        SeqLock(mmap.mmap(-1, 64), 0, SeqLock.HEADER)


def test_a_reader_between_the_two_halves_of_a_write_gets_none():
    buf = Interleaved(256, 16 + SeqLock.HEADER)
    region = SeqLock(buf, 16, 128)
    region.write(b"old payload")
    seen = []
    buf.during_copy = lambda: seen.append(region.read(attempts=3))
    region.write(b"new")                                # its payload goes in half-way through the write
    assert seen == [None]
    assert region.read() == b"new"


def test_a_write_during_a_read_makes_the_read_fail_not_tear():
    buf = Interleaved(256, SeqLock.HEADER)
    region = SeqLock(buf, 0, 256)
    region.write(b"A" * 40)
    buf.during_copy = lambda: region.write(b"B" * 10)   # lands while the reader copies the payload
    assert region.read() is None                        # the copy may mix both: it is not returned
    buf.during_copy = lambda: region.write(b"C" * 10)
    assert region.read(attempts=2) == b"C" * 10         # a retry after the write gets the new payload


def test_clear_empties_the_payload_and_moves_the_sequence():
    import mmap

    from minique.worker.seqlock import SeqLock
    lock = SeqLock(mmap.mmap(-1, 64), 0, 64)
    lock.write(b"abc")
    before = lock.seq()
    lock.clear()
    assert lock.read() == b"" and lock.seq() != before and lock.seq() % 2 == 0
