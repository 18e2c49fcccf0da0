"""Unit tests for minique.schedules (pure, no Redis).

All expected instants are computed by hand. DST facts used:
  Europe/Berlin 2024: CET=+1, CEST=+2; spring-forward Sun 2024-03-31 at
    01:00 UTC (02:00 CET -> 03:00 CEST); fall-back Sun 2024-10-27 at
    01:00 UTC (03:00 CEST -> 02:00 CET, wall 02:00-03:00 repeats).
  America/New_York 2024: EST=-5, EDT=-4; spring-forward Sun 2024-03-10 at
    07:00 UTC (02:00 EST -> 03:00 EDT); fall-back Sun 2024-11-03 at
    06:00 UTC (02:00 EDT -> 01:00 EST, wall 01:00-02:00 repeats).
"""
from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from minique.schedules import BaseSchedule, crontab, schedule, to_schedule

UTC = timezone.utc
BER = "Europe/Berlin"
NY = "America/New_York"


def U(*args: int) -> datetime:
    """Aware UTC datetime shorthand."""
    return datetime(*args, tzinfo=UTC)


# ------------------------------------------------------------- parsing ----

@pytest.mark.parametrize("kwargs, attr, expected", [
    ({"minute": 5}, "minute", {5}),
    ({"minute": "*/15"}, "minute", {0, 15, 30, 45}),
    ({"minute": "0,30"}, "minute", {0, 30}),
    ({"minute": " 0 , 30 "}, "minute", {0, 30}),
    ({"minute": "10-20/5"}, "minute", {10, 15, 20}),
    ({"minute": "50/4"}, "minute", {50, 54, 58}),
    ({"minute": {1, 2}}, "minute", {1, 2}),
    ({"minute": [0, "30-31"]}, "minute", {0, 30, 31}),
    ({"minute": range(0, 60, 20)}, "minute", {0, 20, 40}),
    ({"hour": "*"}, "hour", set(range(24))),
    ({"hour": "22-2"}, "hour", {22, 23, 0, 1, 2}),
    ({"hour": "9-17/4"}, "hour", {9, 13, 17}),
    ({"day_of_week": "mon-fri"}, "day_of_week", {1, 2, 3, 4, 5}),
    ({"day_of_week": "sun"}, "day_of_week", {0}),
    ({"day_of_week": "Sunday"}, "day_of_week", {0}),
    ({"day_of_week": 7}, "day_of_week", {0}),
    ({"day_of_week": "0"}, "day_of_week", {0}),
    ({"day_of_week": "1-7"}, "day_of_week", set(range(7))),
    ({"day_of_week": "5-7"}, "day_of_week", {5, 6, 0}),
    ({"day_of_week": "sat-mon"}, "day_of_week", {6, 0, 1}),
    ({"day_of_week": "fri-tue"}, "day_of_week", {5, 6, 0, 1, 2}),
    ({"day_of_week": "sat,sun"}, "day_of_week", {6, 0}),
    ({"day_of_week": "*/2"}, "day_of_week", {0, 2, 4, 6}),
    ({"day_of_week": ["mon", 3]}, "day_of_week", {1, 3}),
    ({"day_of_month": "28-31"}, "day_of_month", {28, 29, 30, 31}),
    ({"day_of_month": "1,15"}, "day_of_month", {1, 15}),
    ({"day_of_month": "*"}, "day_of_month", set(range(1, 32))),
    ({"month_of_year": "*/3"}, "month_of_year", {1, 4, 7, 10}),
    ({"month_of_year": "jan,jul"}, "month_of_year", {1, 7}),
    ({"month_of_year": "nov-feb"}, "month_of_year", {11, 12, 1, 2}),
])
def test_field_parsing(kwargs, attr, expected):
    assert getattr(crontab(**kwargs), attr) == frozenset(expected)


@pytest.mark.parametrize("kwargs, field", [
    ({"minute": 60}, "minute"),
    ({"minute": -1}, "minute"),
    ({"minute": "61"}, "minute"),
    ({"minute": "*/0"}, "minute"),
    ({"minute": "*/x"}, "minute"),
    ({"minute": "a"}, "minute"),
    ({"minute": ""}, "minute"),
    ({"minute": "1,,2"}, "minute"),
    ({"minute": "-5"}, "minute"),
    ({"minute": 1.5}, "minute"),
    ({"minute": True}, "minute"),
    ({"minute": set()}, "minute"),
    ({"minute": [1, None]}, "minute"),
    ({"minute": None}, "minute"),
    ({"hour": 24}, "hour"),
    ({"hour": "1-25"}, "hour"),
    ({"day_of_week": 8}, "day_of_week"),
    ({"day_of_week": "funday"}, "day_of_week"),
    ({"day_of_week": "mon-xyz"}, "day_of_week"),
    ({"day_of_month": 0}, "day_of_month"),
    ({"day_of_month": 32}, "day_of_month"),
    ({"month_of_year": 0}, "month_of_year"),
    ({"month_of_year": 13}, "month_of_year"),
    ({"month_of_year": "foo"}, "month_of_year"),
])
def test_field_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=f"crontab {field}="):
        crontab(**kwargs)


@pytest.mark.parametrize("dom, moy", [
    (30, 2), (31, 2), (31, "4,6,9,11"), ("30-31", "feb"),
])
def test_impossible_day_month_combination_rejected(dom, moy):
    with pytest.raises(ValueError, match="never occurs"):
        crontab(0, 0, day_of_month=dom, month_of_year=moy)


def test_feb_29_is_allowed():
    crontab(0, 0, day_of_month=29, month_of_year=2)


@pytest.mark.parametrize("tz, exc", [
    ("Not/AZone", ValueError), ("", ValueError), (42, TypeError),
])
def test_bad_tz(tz, exc):
    with pytest.raises(exc):
        crontab(tz=tz)
    with pytest.raises(exc):
        schedule(10, tz=tz)


# -------------------------------------------------------- repr / equality --

@pytest.mark.parametrize("c, text", [
    (crontab(0, 8), "<crontab: 0 8 * * * (m/h/dM/MY/d)>"),
    (crontab(), "<crontab: * * * * * (m/h/dM/MY/d)>"),
    (crontab("*/15", "9-17", "mon-fri", "1", "jan"),
     "<crontab: */15 9-17 1 jan mon-fri (m/h/dM/MY/d)>"),
    (crontab({30, 0}, 1), "<crontab: 0,30 1 * * * (m/h/dM/MY/d)>"),
    (crontab(0, 8, tz=BER), "<crontab: 0 8 * * * (m/h/dM/MY/d) tz=Europe/Berlin>"),
])
def test_crontab_repr(c, text):
    assert repr(c) == text


def test_crontab_equality_uses_expanded_sets():
    assert crontab("*/30") == crontab("0,30") == crontab({0, 30})
    assert crontab(day_of_week="sun") == crontab(day_of_week=7) == crontab(day_of_week=0)
    assert hash(crontab("*/30")) == hash(crontab([0, 30]))
    assert crontab(0) != crontab(1)
    assert crontab(0) != crontab(0, tz=BER)
    assert crontab(0, tz=BER) == crontab(0, tz=ZoneInfo(BER))
    assert crontab(0) != schedule(60)
    assert len({crontab(0, 8), crontab("0", "8"), crontab(0, 9)}) == 2


def test_schedule_equality_and_repr():
    assert schedule(60) == schedule(timedelta(minutes=1))
    assert hash(schedule(60)) == hash(schedule(60.0))
    assert schedule(60) != schedule(60, relative=True)
    assert schedule(60) != schedule(60, tz=BER)
    assert repr(schedule(90)) == "<schedule: every 0:01:30>"
    assert "relative=True" in repr(schedule(90, relative=True))


def test_pickle_roundtrip():
    for s in (crontab("*/5", "9-17", "mon-fri", tz=BER), schedule(30, True, tz=NY)):
        assert pickle.loads(pickle.dumps(s)) == s


# ------------------------------------------------------------- tz handling -

def test_with_tz_returns_copy():
    c = crontab(0, 8)
    assert c.tz is None and c.zone is UTC
    b = c.with_tz("Asia/Shanghai")
    assert b.tz == ZoneInfo("Asia/Shanghai") and c.tz is None
    assert b is not c and isinstance(b, crontab)
    # 08:00 Shanghai (+8, no DST) = 00:00 UTC
    assert b.next_after(None, U(2024, 6, 1, 12)) == U(2024, 6, 2, 0)
    assert c.next_after(None, U(2024, 6, 1, 12)) == U(2024, 6, 2, 8)
    s = schedule(10).with_tz(NY)
    assert isinstance(s, schedule) and s.tz == ZoneInfo(NY)


def test_naive_inputs_are_utc_and_outputs_are_utc():
    c = crontab(0, 8, tz=BER)
    r = c.next_after(None, datetime(2024, 6, 1, 12))
    assert r == U(2024, 6, 2, 6) and r.tzinfo is UTC
    # An aware non-UTC input is converted: 14:00+02:00 == 12:00 UTC.
    r2 = c.next_after(None, datetime(2024, 6, 1, 14, tzinfo=ZoneInfo(BER)))
    assert r2 == r and r2.tzinfo is UTC
    s = schedule(60)
    out = s.next_after(datetime(2024, 1, 1), datetime(2024, 1, 1))
    assert out == U(2024, 1, 1, 0, 1) and out.tzinfo is UTC


def test_non_datetime_rejected():
    with pytest.raises(TypeError):
        crontab().next_after(None, "2024-01-01")


# ----------------------------------------------------- crontab next_after --

@pytest.mark.parametrize("c, last_run, now, expected", [
    # Every minute: strictly after.
    (crontab(), None, U(2024, 1, 1, 10, 0), U(2024, 1, 1, 10, 1)),
    (crontab(), None, U(2024, 1, 1, 10, 0, 30), U(2024, 1, 1, 10, 1)),
    (crontab(), U(2024, 1, 1, 9, 0), U(2024, 1, 1, 10, 0), U(2024, 1, 1, 9, 1)),
    # Daily 08:00 UTC.
    (crontab(0, 8), None, U(2024, 1, 1, 7, 59), U(2024, 1, 1, 8, 0)),
    (crontab(0, 8), None, U(2024, 1, 1, 8, 0), U(2024, 1, 2, 8, 0)),
    (crontab(0, 8), U(2024, 1, 1, 8, 0), U(2024, 1, 1, 9), U(2024, 1, 2, 8, 0)),
    # last_run wins over now (overdue entry: result lies before now).
    (crontab(0, 8), U(2024, 1, 1, 8, 0), U(2024, 1, 5), U(2024, 1, 2, 8, 0)),
    # */15 minutes.
    (crontab("*/15"), None, U(2024, 1, 1, 10, 7), U(2024, 1, 1, 10, 15)),
    (crontab("*/15"), None, U(2024, 1, 1, 10, 45), U(2024, 1, 1, 11, 0)),
    (crontab("*/15"), None, U(2024, 12, 31, 23, 50), U(2025, 1, 1, 0, 0)),
    # Sets.
    (crontab({5, 35}, {1, 13}), None, U(2024, 1, 1, 1, 6), U(2024, 1, 1, 1, 35)),
    (crontab({5, 35}, {1, 13}), None, U(2024, 1, 1, 1, 36), U(2024, 1, 1, 13, 5)),
    # Weekdays: 2024-06-07 is a Friday.
    (crontab(0, 9, "mon-fri"), None, U(2024, 6, 7, 8), U(2024, 6, 7, 9)),
    (crontab(0, 9, "mon-fri"), None, U(2024, 6, 7, 10), U(2024, 6, 10, 9)),
    (crontab(0, 9, "sun"), None, U(2024, 6, 7, 10), U(2024, 6, 9, 9)),
    (crontab(0, 9, 7), None, U(2024, 6, 7, 10), U(2024, 6, 9, 9)),
    (crontab(0, 9, "sat,sun"), None, U(2024, 6, 9, 10), U(2024, 6, 15, 9)),
    (crontab(0, 0, "wed"), None, U(2024, 6, 7), U(2024, 6, 12)),
    # Day of month AND day of week must both match (Celery semantics):
    # first Friday-the-13th after 2024-06-01 is 2024-09-13.
    (crontab(0, 0, "fri", 13), None, U(2024, 6, 1), U(2024, 9, 13)),
    # Month ends: day 31 skips short months.
    (crontab(0, 0, day_of_month=31), None, U(2024, 1, 31), U(2024, 3, 31)),
    (crontab(0, 0, day_of_month=31), None, U(2024, 3, 31), U(2024, 5, 31)),
    (crontab(0, 0, day_of_month=31), None, U(2024, 7, 31), U(2024, 8, 31)),
    (crontab(0, 0, day_of_month=31), None, U(2024, 12, 31), U(2025, 1, 31)),
    (crontab(0, 0, day_of_month=30), None, U(2024, 1, 30), U(2024, 3, 30)),
    # Feb 29 only in leap years.
    (crontab(0, 0, day_of_month=29, month_of_year=2), None, U(2023, 1, 1), U(2024, 2, 29)),
    (crontab(0, 0, day_of_month=29, month_of_year=2), None, U(2024, 3, 1), U(2028, 2, 29)),
    (crontab(0, 0, day_of_month=29, month_of_year=2), None, U(2096, 3, 1), U(2104, 2, 29)),
    # Feb 29 that is a Monday: 2024 Thu, 2028 Tue, 2032 Sun, 2036 Fri,
    # 2040 Wed, 2044 Mon.
    (crontab(0, 0, "mon", 29, 2), None, U(2024, 1, 1), U(2044, 2, 29)),
    # Month of year.
    (crontab(0, 0, day_of_month=1, month_of_year="jan,jul"), None, U(2024, 1, 1), U(2024, 7, 1)),
    (crontab(0, 0, day_of_month=1, month_of_year="jan,jul"), None, U(2024, 7, 1), U(2025, 1, 1)),
    # Fixed-offset zones without DST.
    (crontab(0, 8, tz="Asia/Shanghai"), None, U(2024, 1, 1, 0, 0), U(2024, 1, 2, 0, 0)),
    (crontab(0, 8, tz="Asia/Kolkata"), None, U(2024, 1, 1, 0, 0), U(2024, 1, 1, 2, 30)),
    # Local date differs from the UTC date: 01:00 Shanghai Monday = Sunday 17:00 UTC.
    (crontab(0, 1, "mon", tz="Asia/Shanghai"), None, U(2024, 6, 7), U(2024, 6, 9, 17)),
])
def test_crontab_next_after(c, last_run, now, expected):
    got = c.next_after(last_run, now)
    assert got == expected
    assert got.tzinfo is UTC


def test_crontab_remaining():
    c = crontab(0, 8)
    assert c.remaining(None, U(2024, 1, 1, 7, 30)) == 1800.0
    # Overdue: last run two days ago -> next slot already passed.
    assert c.remaining(U(2024, 1, 1, 8), U(2024, 1, 3, 9)) == -25 * 3600.0


# ------------------------------------------------------------- crontab DST -

@pytest.mark.parametrize("c, last_run, now, expected", [
    # Berlin 02:30 daily. Day before spring-forward: 02:30 CET = 01:30 UTC.
    (crontab(30, 2, tz=BER), None, U(2024, 3, 29, 12), U(2024, 3, 30, 1, 30)),
    # Spring-forward day: 02:30 does not exist -> shifted by the 1h gap to
    # 03:30 CEST = 01:30 UTC.
    (crontab(30, 2, tz=BER), None, U(2024, 3, 30, 12), U(2024, 3, 31, 1, 30)),
    # ... also found when "now" is already past the gap in wall time
    # (03:10 CEST = 01:10 UTC).
    (crontab(30, 2, tz=BER), None, U(2024, 3, 31, 1, 10), U(2024, 3, 31, 1, 30)),
    # Next day: 02:30 CEST = 00:30 UTC.
    (crontab(30, 2, tz=BER), U(2024, 3, 31, 1, 30), U(2024, 3, 31, 2), U(2024, 4, 1, 0, 30)),
    # Job at exactly 02:00 on spring-forward day -> 03:00 CEST = 01:00 UTC.
    (crontab(0, 2, tz=BER), None, U(2024, 3, 30, 12), U(2024, 3, 31, 1, 0)),
    # Fall-back day: 02:30 occurs twice; first occurrence (CEST) = 00:30 UTC.
    (crontab(30, 2, tz=BER), None, U(2024, 10, 26, 12), U(2024, 10, 27, 0, 30)),
    # After the first occurrence, the second one (01:30 UTC) is skipped:
    # next is 2024-10-28 02:30 CET = 01:30 UTC.
    (crontab(30, 2, tz=BER), U(2024, 10, 27, 0, 30), U(2024, 10, 27, 1), U(2024, 10, 28, 1, 30)),
    (crontab(30, 2, tz=BER), None, U(2024, 10, 27, 1, 10), U(2024, 10, 28, 1, 30)),
    # New York 02:30: day before spring-forward 02:30 EST = 07:30 UTC.
    (crontab(30, 2, tz=NY), None, U(2024, 3, 9, 0), U(2024, 3, 9, 7, 30)),
    # Spring-forward day: shifted to 03:30 EDT = 07:30 UTC.
    (crontab(30, 2, tz=NY), None, U(2024, 3, 10, 0), U(2024, 3, 10, 7, 30)),
    # Day after: 02:30 EDT = 06:30 UTC.
    (crontab(30, 2, tz=NY), U(2024, 3, 10, 7, 30), U(2024, 3, 10, 8), U(2024, 3, 11, 6, 30)),
    # NY fall-back: 01:30 repeats; first occurrence 01:30 EDT = 05:30 UTC.
    (crontab(30, 1, tz=NY), None, U(2024, 11, 3, 0), U(2024, 11, 3, 5, 30)),
    # From inside the repeated hour (01:40 EDT = 05:40 UTC) the second
    # 01:30 (EST, 06:30 UTC) does not fire; next is 2024-11-04 01:30 EST.
    (crontab(30, 1, tz=NY), None, U(2024, 11, 3, 5, 40), U(2024, 11, 4, 6, 30)),
    (crontab(30, 1, tz=NY), U(2024, 11, 3, 5, 30), U(2024, 11, 3, 6), U(2024, 11, 4, 6, 30)),
    # Non-ambiguous time on the fall-back day: 03:00 EST = 08:00 UTC.
    (crontab(0, 3, tz=NY), None, U(2024, 11, 3, 0), U(2024, 11, 3, 8, 0)),
])
def test_crontab_dst_next_after(c, last_run, now, expected):
    assert c.next_after(last_run, now) == expected


@pytest.mark.parametrize("c, start, end, expected", [
    # Daily 02:30 Berlin fires exactly once on the spring-forward day.
    (crontab(30, 2, tz=BER), U(2024, 3, 30), U(2024, 4, 2),
     [U(2024, 3, 30, 1, 30), U(2024, 3, 31, 1, 30), U(2024, 4, 1, 0, 30)]),
    # ... and exactly once on the fall-back day (first occurrence).
    (crontab(30, 2, tz=BER), U(2024, 10, 26), U(2024, 10, 29),
     [U(2024, 10, 26, 0, 30), U(2024, 10, 27, 0, 30), U(2024, 10, 28, 1, 30)]),
    # Hourly across Berlin spring-forward: wall 02:00 -> 03:00 CEST, which is
    # the same instant as wall 03:00: one firing per real hour.
    (crontab(0, tz=BER), U(2024, 3, 30, 23), U(2024, 3, 31, 3),
     [U(2024, 3, 31, 0), U(2024, 3, 31, 1), U(2024, 3, 31, 2), U(2024, 3, 31, 3)]),
    # Hourly across Berlin fall-back: wall 02:00 fires once (00:00 UTC, CEST);
    # the repeated 02:00 CET (01:00 UTC) is skipped; 03:00 CET = 02:00 UTC.
    (crontab(0, tz=BER), U(2024, 10, 26, 22), U(2024, 10, 27, 3),
     [U(2024, 10, 26, 23), U(2024, 10, 27, 0), U(2024, 10, 27, 2), U(2024, 10, 27, 3)]),
    # */15 during hours 1-3 on Berlin spring-forward: the gap's 02:xx slots
    # coincide with 03:xx, so each instant fires once.
    (crontab("*/15", "1-3", tz=BER), U(2024, 3, 30, 23, 59), U(2024, 3, 31, 3),
     [U(2024, 3, 31, 0, 0), U(2024, 3, 31, 0, 15), U(2024, 3, 31, 0, 30),
      U(2024, 3, 31, 0, 45), U(2024, 3, 31, 1, 0), U(2024, 3, 31, 1, 15),
      U(2024, 3, 31, 1, 30), U(2024, 3, 31, 1, 45)]),
    # Hourly across NY spring-forward: 01:00 EST=06:00, 02:00->03:00 EDT=07:00,
    # 03:00 EDT=07:00 (same), 04:00 EDT=08:00.
    (crontab(0, tz=NY), U(2024, 3, 10, 5), U(2024, 3, 10, 8),
     [U(2024, 3, 10, 6), U(2024, 3, 10, 7), U(2024, 3, 10, 8)]),
    # Hourly across NY fall-back: 00:00 EDT=04:00, 01:00 EDT=05:00,
    # (01:00 EST=06:00 skipped), 02:00 EST=07:00, 03:00 EST=08:00.
    (crontab(0, tz=NY), U(2024, 11, 3, 3), U(2024, 11, 3, 8),
     [U(2024, 11, 3, 4), U(2024, 11, 3, 5), U(2024, 11, 3, 7), U(2024, 11, 3, 8)]),
    # Half-hourly 01:xx in NY on fall-back day: both 01:00 and 01:30 fire only
    # in the first (EDT) pass.
    (crontab("0,30", 1, tz=NY), U(2024, 11, 3), U(2024, 11, 3, 12),
     [U(2024, 11, 3, 5, 0), U(2024, 11, 3, 5, 30)]),
])
def test_crontab_dst_slots(c, start, end, expected):
    assert c.slots_between(start, end, 100) == expected


def test_crontab_dst_gap_at_midnight():
    # America/Santiago 2024-09-08: 00:00 -04 -> 01:00 -03 (04:00 UTC).
    # 00:30 on 09-07 (-04) = 04:30 UTC; on 09-08 it is skipped and shifted to
    # 01:30 -03 = 04:30 UTC; on 09-09 00:30 -03 = 03:30 UTC.
    c = crontab(30, 0, tz="America/Santiago")
    assert c.slots_between(U(2024, 9, 6, 12), U(2024, 9, 10), 10) == [
        U(2024, 9, 7, 4, 30), U(2024, 9, 8, 4, 30), U(2024, 9, 9, 3, 30)]


def test_crontab_whole_skipped_day():
    # Pacific/Apia skipped 2011-12-30 (-10 -> +14 at 10:00 UTC). Noon jobs:
    # 12-29 12:00 -10 = 22:00 UTC; the missing 12-30 noon is shifted 24h onto
    # 12-31 noon +14 = 12-30 22:00 UTC (fires once); 01-01 noon = 12-31 22:00.
    c = crontab(0, 12, tz="Pacific/Apia")
    assert c.slots_between(U(2011, 12, 29), U(2012, 1, 1), 10) == [
        U(2011, 12, 29, 22), U(2011, 12, 30, 22), U(2011, 12, 31, 22)]
    # "now" on local 12-31 while the answer comes from wall date 12-30.
    assert c.next_after(None, U(2011, 12, 30, 21)) == U(2011, 12, 30, 22)


def test_crontab_sunday_morning_weekly_on_dst_days():
    # Weekly Sunday 02:30 Berlin; both DST days in 2024 are Sundays.
    c = crontab(30, 2, "sun", tz=BER)
    assert c.slots_between(U(2024, 3, 23), U(2024, 4, 8), 10) == [
        U(2024, 3, 24, 1, 30), U(2024, 3, 31, 1, 30), U(2024, 4, 7, 0, 30)]
    assert c.slots_between(U(2024, 10, 19), U(2024, 11, 4), 10) == [
        U(2024, 10, 20, 0, 30), U(2024, 10, 27, 0, 30), U(2024, 11, 3, 1, 30)]


# ----------------------------------------------------- crontab slots -------

@pytest.mark.parametrize("c, start, end, limit, expected", [
    # (start, end]: start excluded, end included.
    (crontab("*/15"), U(2024, 1, 1, 10), U(2024, 1, 1, 11), 10,
     [U(2024, 1, 1, 10, 15), U(2024, 1, 1, 10, 30), U(2024, 1, 1, 10, 45), U(2024, 1, 1, 11)]),
    # limit keeps the earliest.
    (crontab("*/15"), U(2024, 1, 1, 10), U(2024, 1, 1, 11), 2,
     [U(2024, 1, 1, 10, 15), U(2024, 1, 1, 10, 30)]),
    (crontab("*/15"), U(2024, 1, 1, 10), U(2024, 1, 1, 11), 0, []),
    (crontab("*/15"), U(2024, 1, 1, 10), U(2024, 1, 1, 10, 14), 10, []),
    (crontab("*/15"), U(2024, 1, 1, 11), U(2024, 1, 1, 10), 10, []),
    # day_of_month 28-31 over Feb 2023 (non-leap) / Feb 2024 (leap) into March.
    (crontab(0, 0, day_of_month="28-31"), U(2023, 2, 1), U(2023, 3, 31), 10,
     [U(2023, 2, 28), U(2023, 3, 28), U(2023, 3, 29), U(2023, 3, 30), U(2023, 3, 31)]),
    (crontab(0, 0, day_of_month="28-31"), U(2024, 2, 1), U(2024, 3, 29), 10,
     [U(2024, 2, 28), U(2024, 2, 29), U(2024, 3, 28), U(2024, 3, 29)]),
    # day 31 over a year.
    (crontab(0, 0, day_of_month=31), U(2024, 1, 1), U(2024, 12, 31), 20,
     [U(2024, 1, 31), U(2024, 3, 31), U(2024, 5, 31), U(2024, 7, 31),
      U(2024, 8, 31), U(2024, 10, 31), U(2024, 12, 31)]),
    # Weekdays, week of 2024-06-10 (Mon) .. 06-16 (Sun).
    (crontab(0, 9, "mon-fri"), U(2024, 6, 9), U(2024, 6, 17), 10,
     [U(2024, 6, d, 9) for d in (10, 11, 12, 13, 14)]),
    (crontab(0, 9, "sat-mon"), U(2024, 6, 9, 10), U(2024, 6, 17, 10), 10,
     [U(2024, 6, 10, 9), U(2024, 6, 15, 9), U(2024, 6, 16, 9), U(2024, 6, 17, 9)]),
])
def test_crontab_slots_between(c, start, end, limit, expected):
    assert c.slots_between(start, end, limit) == expected


def test_crontab_many_missed_slots_limited():
    # Beat down for 30 days with an every-minute job: only `limit` counted.
    got = crontab().slots_between(U(2024, 1, 1), U(2024, 1, 31), 5)
    assert got == [U(2024, 1, 1, 0, m) for m in range(1, 6)]
    assert len(crontab().slots_between(U(2024, 1, 1), U(2024, 1, 2), 10_000)) == 1440


# --------------------------------------------------------- interval --------

@pytest.mark.parametrize("run_every, seconds", [
    (30, 30.0), (0.5, 0.5), (timedelta(minutes=5), 300.0), (timedelta(days=1), 86400.0),
])
def test_schedule_run_every(run_every, seconds):
    s = schedule(run_every)
    assert s.seconds == seconds
    assert s.run_every == timedelta(seconds=seconds)


@pytest.mark.parametrize("run_every, exc", [
    (0, ValueError), (-5, ValueError), (timedelta(0), ValueError),
    ("10", TypeError), (None, TypeError), (True, TypeError),
])
def test_schedule_validation(run_every, exc):
    with pytest.raises(exc):
        schedule(run_every)


@pytest.mark.parametrize("s, last_run, now, expected", [
    # Never run: due immediately.
    (schedule(60), None, U(2024, 1, 1, 10, 0, 7), U(2024, 1, 1, 10, 0, 7)),
    (schedule(60, relative=True), None, U(2024, 1, 1, 10, 0, 7), U(2024, 1, 1, 10, 0, 7)),
    (schedule(60), U(2024, 1, 1, 10), U(2024, 1, 1, 10), U(2024, 1, 1, 10, 1)),
    (schedule(timedelta(minutes=5)), U(2024, 1, 1, 10, 2, 3), U(2024, 1, 1, 10, 3),
     U(2024, 1, 1, 10, 7, 3)),
    (schedule(0.5), U(2024, 1, 1), U(2024, 1, 1), datetime(2024, 1, 1, 0, 0, 0, 500000, UTC)),
    # Plain intervals are real elapsed time, unaffected by tz/DST:
    # 1 hour after 00:30 UTC on Berlin's fall-back day is 01:30 UTC.
    (schedule(3600, tz=BER), U(2024, 10, 27, 0, 30), U(2024, 10, 27, 1), U(2024, 10, 27, 1, 30)),
    # Overdue.
    (schedule(60), U(2024, 1, 1, 10), U(2024, 1, 1, 12), U(2024, 1, 1, 10, 1)),
])
def test_schedule_next_after(s, last_run, now, expected):
    got = s.next_after(last_run, now)
    assert got == expected and got.tzinfo is UTC


@pytest.mark.parametrize("s, last_run, now, expected", [
    (schedule(60), U(2024, 1, 1, 10), U(2024, 1, 1, 10, 0, 15), 45.0),
    (schedule(60), U(2024, 1, 1, 10), U(2024, 1, 1, 10, 1), 0.0),
    (schedule(60), U(2024, 1, 1, 10), U(2024, 1, 1, 10, 3), -120.0),
    (schedule(60), None, U(2024, 1, 1, 10, 3), 0.0),
    (schedule(1800, relative=True), U(2024, 1, 1, 10, 7), U(2024, 1, 1, 10, 10), 1200.0),
])
def test_schedule_remaining(s, last_run, now, expected):
    assert s.remaining(last_run, now) == expected


@pytest.mark.parametrize("s, last_run, expected", [
    # Every 30 min relative: :00/:30 boundaries, strictly after last_run.
    (schedule(timedelta(minutes=30), relative=True), U(2024, 1, 1, 10, 7, 30), U(2024, 1, 1, 10, 30)),
    (schedule(timedelta(minutes=30), relative=True), U(2024, 1, 1, 10, 30), U(2024, 1, 1, 11, 0)),
    (schedule(timedelta(minutes=30), relative=True), U(2024, 1, 1, 10, 59, 59), U(2024, 1, 1, 11, 0)),
    (schedule(timedelta(hours=1), relative=True), U(2024, 1, 1, 23, 15), U(2024, 1, 2, 0, 0)),
    (schedule(timedelta(hours=6), relative=True), U(2024, 1, 1, 13), U(2024, 1, 1, 18)),
    (schedule(10, relative=True), U(2024, 1, 1, 0, 0, 3), U(2024, 1, 1, 0, 0, 10)),
    # Daily relative in Shanghai (+8): local midnight = 16:00 UTC.
    (schedule(timedelta(days=1), relative=True, tz="Asia/Shanghai"), U(2024, 1, 1, 3), U(2024, 1, 1, 16)),
    (schedule(timedelta(days=1), relative=True, tz="Asia/Shanghai"), U(2024, 1, 1, 16), U(2024, 1, 2, 16)),
    # Hourly relative in Kolkata (+5:30): local top of hour = hh:30 UTC.
    (schedule(3600, relative=True, tz="Asia/Kolkata"), U(2024, 1, 1, 10, 0), U(2024, 1, 1, 10, 30)),
    # Berlin spring-forward, 30 min relative: after 01:45 CET (00:45 UTC)
    # comes 03:00 CEST = 01:00 UTC.
    (schedule(1800, relative=True, tz=BER), U(2024, 3, 31, 0, 45), U(2024, 3, 31, 1, 0)),
    # Daily relative in Berlin across spring-forward: 2024-04-01 00:00 CEST = 03-31 22:00 UTC.
    (schedule(timedelta(days=1), relative=True, tz=BER), U(2024, 3, 30, 23), U(2024, 3, 31, 22)),
    # ... and across fall-back: 2024-10-28 00:00 CET = 10-27 23:00 UTC.
    (schedule(timedelta(days=1), relative=True, tz=BER), U(2024, 10, 26, 22), U(2024, 10, 27, 23)),
    # Interval longer than a day: 7 days from 1970-01-01 (a Thursday) local.
    (schedule(timedelta(days=7), relative=True), U(2024, 6, 7), U(2024, 6, 13)),
])
def test_schedule_relative_next_after(s, last_run, expected):
    assert s.next_after(last_run, U(2030, 1, 1)) == expected


@pytest.mark.parametrize("s, start, end, limit, expected", [
    (schedule(60), U(2024, 1, 1, 10), U(2024, 1, 1, 10, 5), 3,
     [U(2024, 1, 1, 10, 1), U(2024, 1, 1, 10, 2), U(2024, 1, 1, 10, 3)]),
    (schedule(60), U(2024, 1, 1, 10), U(2024, 1, 1, 10, 3), 10,
     [U(2024, 1, 1, 10, 1), U(2024, 1, 1, 10, 2), U(2024, 1, 1, 10, 3)]),
    (schedule(60), U(2024, 1, 1, 10), U(2024, 1, 1, 10, 0, 59), 10, []),
    (schedule(60), U(2024, 1, 1, 10), U(2024, 1, 1, 10, 5), 0, []),
    (schedule(60), U(2024, 1, 1, 10), U(2024, 1, 1, 9), 10, []),
    (schedule(60), U(2024, 1, 1), U(2124, 1, 1), 2, [U(2024, 1, 1, 0, 1), U(2024, 1, 1, 0, 2)]),
    (schedule(1800, relative=True), U(2024, 1, 1, 10, 7), U(2024, 1, 1, 11, 30), 10,
     [U(2024, 1, 1, 10, 30), U(2024, 1, 1, 11), U(2024, 1, 1, 11, 30)]),
    (schedule(1800, relative=True), U(2024, 1, 1, 10, 7), U(2024, 1, 1, 11, 30), 1,
     [U(2024, 1, 1, 10, 30)]),
    # Hourly relative across Berlin fall-back fires every real hour, including
    # the repeated 02:00 CET (01:00 UTC) -- it is an interval, not a cron.
    (schedule(3600, relative=True, tz=BER), U(2024, 10, 26, 22, 30), U(2024, 10, 27, 3), 10,
     [U(2024, 10, 26, 23), U(2024, 10, 27, 0), U(2024, 10, 27, 1), U(2024, 10, 27, 2),
      U(2024, 10, 27, 3)]),
    # Hourly relative across NY spring-forward: 01:00 EST=06:00, 03:00 EDT=07:00.
    (schedule(3600, relative=True, tz=NY), U(2024, 3, 10, 5, 30), U(2024, 3, 10, 8), 10,
     [U(2024, 3, 10, 6), U(2024, 3, 10, 7), U(2024, 3, 10, 8)]),
])
def test_schedule_slots_between(s, start, end, limit, expected):
    assert s.slots_between(start, end, limit) == expected


# --------------------------------------------------------- to_schedule -----

@pytest.mark.parametrize("value, expected", [
    (30, schedule(30)),
    (2.5, schedule(2.5)),
    (timedelta(hours=1), schedule(3600)),
])
def test_to_schedule_converts(value, expected):
    got = to_schedule(value)
    assert isinstance(got, schedule) and got == expected


def test_to_schedule_passthrough():
    for s in (crontab(0, 8), schedule(10, relative=True)):
        assert to_schedule(s) is s
        assert isinstance(s, BaseSchedule)


@pytest.mark.parametrize("value", ["*/5 * * * *", None, True, [1, 2], object()])
def test_to_schedule_rejects(value):
    with pytest.raises(TypeError, match="beat schedule"):
        to_schedule(value)


def test_to_schedule_nonpositive_number():
    with pytest.raises(ValueError):
        to_schedule(0)
