"""Rate limits: parsing, the shared table and a pool process's token buckets (pure, no Redis)."""
import pytest

from minique.worker import ratelimit
from minique.worker.ratelimit import RateLimiter, RateLimitTable, parse_rate
from test_events import FakeClock


def test_rate_parsing_and_token_bucket(monkeypatch):
    assert parse_rate("10/s") == 10 and parse_rate("120/m") == 2 and parse_rate("3600/h") == 1
    assert parse_rate(5) == 5 and parse_rate("7") == 7 and parse_rate(None) == 0 and parse_rate("0") == 0
    with pytest.raises(ValueError):
        parse_rate("10/d")
    # the limiter's waits on a fake clock: exact, whatever the load of the machine
    clock = FakeClock()
    monkeypatch.setattr(ratelimit, "time", clock)
    table = RateLimitTable()
    table.write({"t.x": 0.05})  # one start per 50 ms in this process
    limiter = RateLimiter(table)
    t0 = clock.now
    for _ in range(5):
        limiter.acquire("t.x")
        limiter.acquire("t.other")  # not limited: no wait
    assert clock.now - t0 == pytest.approx(0.2)  # the first start at once, then one per 50 ms
    table.write({})
    clock.slept.clear()
    for _ in range(5):
        limiter.acquire("t.x")
    assert clock.slept == []  # no limit: no wait at all


class Batch:
    """Stands in for the worker's Outbox: records when it is flushed."""

    def __init__(self, log):
        self.log = log

    def flush(self):
        self.log.append("flush")


def test_before_a_wait_the_event_is_recorded_and_the_batch_flushed(monkeypatch):
    monkeypatch.setattr(ratelimit, "time", FakeClock())
    table = RateLimitTable()
    table.write({"t.x": 0.02})
    limiter, log = RateLimiter(table), []
    limiter.acquire("t.x", Batch(log), lambda: log.append("received"))    # the bucket is full: no wait
    limiter.acquire("t.other", Batch(log), lambda: log.append("received"))  # not limited: no wait
    assert log == []
    limiter.acquire("t.x", Batch(log), lambda: log.append("received"))    # waits: earlier writes go first
    assert log == ["received", "flush"]


def test_the_table_round_trips_and_says_when_it_changed():
    table = RateLimitTable()
    assert table.read() == {}
    before = table.seq()
    table.write({"t.a": 0.5, "t.b": 2.0})
    assert table.seq() != before and table.read() == {"t.a": 0.5, "t.b": 2.0}
    with pytest.raises(ValueError, match="too many"):
        table.write({f"t.{i}": 1.0 for i in range(10_000)})
    assert table.read() == {"t.a": 0.5, "t.b": 2.0}  # a table that does not fit leaves the old one
