"""Beat without Redis: entry parsing / validation and the missed-run decision."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from minique import Minique
from minique.beat import ALL_CAP, Beat, Due, due_slots, parse_entries
from minique.exceptions import ConfigurationError
from minique.schedules import crontab, schedule

pytestmark = pytest.mark.timeout(20)

UTC = timezone.utc
NOW = datetime(2024, 3, 10, 12, 0, 30, tzinfo=UTC)


def at(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


# --- entries -------------------------------------------------------------------------------------

def test_parse_entries_accepts_every_schedule_kind():
    entries = parse_entries({
        "num": {"task": "t.num", "schedule": 10},
        "float": {"task": "t.float", "schedule": 0.5, "args": [1, 2], "kwargs": {"x": 1}},
        "td": {"task": "t.td", "schedule": timedelta(minutes=5), "options": {"queue": "q", "priority": 3}},
        "cron": {"task": "t.cron", "schedule": crontab(minute=0, hour=3)},
        "sched": {"task": "t.sched", "schedule": schedule(30)},
        "rel": {"task": "t.rel", "schedule": 1800, "relative": True},
    }, "Europe/Paris")
    assert entries["num"].schedule == schedule(10, tz="Europe/Paris")
    assert entries["float"].args == (1, 2) and entries["float"].kwargs == {"x": 1}
    assert entries["td"].schedule.run_every == timedelta(minutes=5)
    assert entries["td"].options == {"queue": "q", "priority": 3}
    assert entries["cron"].schedule == crontab(minute=0, hour=3, tz="Europe/Paris")
    assert entries["rel"].schedule.relative is True
    assert str(entries["sched"].schedule.tz) == "Europe/Paris"


def test_parse_entries_keeps_a_schedule_own_time_zone():
    entries = parse_entries({"c": {"task": "t", "schedule": crontab(hour=1, tz="Asia/Tokyo")}}, "Europe/Paris")
    assert str(entries["c"].schedule.tz) == "Asia/Tokyo"
    assert parse_entries({"u": {"task": "t", "schedule": 5}}, None)["u"].schedule.tz is None


@pytest.mark.parametrize("spec, words", [
    ({"schedule": 5}, "'task'"),
    ({"task": "", "schedule": 5}, "'task'"),
    ({"task": "t"}, "'schedule' is missing"),
    ({"task": "t", "schedule": "often"}, "beat schedule must be"),
    ({"task": "t", "schedule": -1}, "positive"),
    ({"task": "t", "schedule": True}, "beat schedule must be"),
    ({"task": "t", "schedule": 5, "args": "abc"}, "'args'"),
    ({"task": "t", "schedule": 5, "kwargs": [1]}, "'kwargs'"),
    ({"task": "t", "schedule": 5, "options": 3}, "'options'"),
    ({"task": "t", "schedule": 5, "options": {"task_id": "x"}}, "task_id"),
    ({"task": "t", "schedule": 5, "options": {"headers": ["x"]}}, "'headers' in 'options' must be a dict"),
    ({"task": "t", "schedule": 5, "kwarg": {}}, "unknown key"),
    ({"task": "t", "schedule": crontab(), "relative": True}, "relative"),
    ("t.task", "must be a dict"),
])
def test_bad_entries_raise_configuration_error_naming_the_entry(spec, words):
    with pytest.raises(ConfigurationError) as info:
        parse_entries({"good": {"task": "t", "schedule": 1}, "broken-entry": spec})
    assert "broken-entry" in str(info.value) and words in str(info.value)


def test_bad_time_zone_and_bad_container():
    with pytest.raises(ConfigurationError, match="'e'.*unknown time zone"):
        parse_entries({"e": {"task": "t", "schedule": 5}}, "Mars/Olympus")
    with pytest.raises(ConfigurationError, match="beat_schedule must be a dict"):
        parse_entries([("e", {})])


def test_beat_validates_entries_and_settings_at_start():
    app = Minique("unit", broker="redis://127.0.0.1:1/0")  # never connected to
    app.conf.beat_schedule = {"prio": {"task": "t", "schedule": 5, "options": {"priority": 42}}}
    with pytest.raises(ConfigurationError, match="'prio'.*priority"):
        Beat(app)
    app.conf.beat_schedule = {"args": {"task": "t", "schedule": 5, "args": [object()]}}
    with pytest.raises(ConfigurationError, match="'args'.*cannot build"):
        Beat(app)
    app.conf.beat_schedule = {"ok": {"task": "t", "schedule": 5}}
    app.conf.beat_missed_policy = "sometimes"
    with pytest.raises(ConfigurationError, match="beat_missed_policy"):
        Beat(app)
    app.conf.beat_missed_policy = "all"
    app.conf.beat_lease_seconds = 0
    with pytest.raises(ConfigurationError, match="beat_lease_seconds"):
        Beat(app)
    app.conf.beat_lease_seconds = 5
    beat = Beat(app, hostname="unit-beat")
    assert list(beat.schedule) == ["ok"] and not beat.is_leader
    assert beat.token.startswith("unit-beat:")


def test_slot_key_is_deterministic_per_slot():
    slot = datetime(2024, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)
    assert Beat.slot_key("e", slot) == "beat:e:1704067201500"
    assert Beat.slot_key("e", slot) == Beat.slot_key("e", slot.astimezone(timezone(timedelta(hours=2))))
    assert Beat.slot_key("e", slot) != Beat.slot_key("e", slot + timedelta(milliseconds=500))


# --- due_slots -----------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["once", "skip", "all"])
def test_interval_never_run_fires_now(policy):
    assert due_slots(schedule(10), None, NOW, policy) == Due([NOW], NOW, 1)


@pytest.mark.parametrize("policy", ["once", "skip", "all"])
def test_crontab_never_run_records_a_baseline_and_waits(policy):
    due = due_slots(crontab(minute=0), None, NOW, policy)
    assert due == Due([], NOW, 0)
    # from that baseline the next slot is the next full hour, not a catch-up
    assert crontab(minute=0).next_after(due.record, NOW) == datetime(2024, 3, 10, 13, tzinfo=UTC)


@pytest.mark.parametrize("policy", ["once", "skip", "all"])
def test_nothing_due_before_the_next_slot(policy):
    assert due_slots(schedule(10), at(seconds=5), NOW, policy) == Due([], None, 0)
    assert due_slots(crontab(minute=0), at(seconds=20), NOW, policy) == Due([], None, 0)


@pytest.mark.parametrize("policy", ["once", "skip", "all"])
def test_one_slot_on_time_fires_under_every_policy(policy):
    due = due_slots(schedule(10), at(seconds=10.2), NOW, policy)
    assert due == Due([at(seconds=0.2)], at(seconds=0.2), 1)
    due = due_slots(crontab(minute=0), at(minutes=60, seconds=30), NOW, policy)  # last run 11:00
    assert due.missed == 1 and due.record == datetime(2024, 3, 10, 12, tzinfo=UTC)
    # 30 s late is more than skip's grace: skip drops it, the others send it
    assert due.fire == ([] if policy == "skip" else [datetime(2024, 3, 10, 12, tzinfo=UTC)])


def test_once_fires_the_latest_missed_slot():
    due = due_slots(schedule(1.0), at(seconds=10.5), NOW, "once")
    assert due == Due([at(seconds=0.5)], at(seconds=0.5), 10)
    due = due_slots(crontab(minute="*/15"), at(hours=3), NOW, "once")
    assert due.fire == [datetime(2024, 3, 10, 12, tzinfo=UTC)] and due.missed == 12


def test_skip_fires_nothing_missed_and_moves_on():
    due = due_slots(schedule(1.0), at(seconds=10.5), NOW, "skip", since=at(seconds=0.1))
    assert due == Due([], at(seconds=0.5), 10)
    assert schedule(1.0).next_after(due.record, NOW) > NOW
    due = due_slots(crontab(minute="*/15"), at(hours=3), NOW, "skip")  # no since: 1 s grace
    assert due.fire == [] and due.record == datetime(2024, 3, 10, 12, tzinfo=UTC)


def test_skip_fires_a_slot_that_fell_due_while_leading():
    # beat has led since 2 s ago: the slot 0.5 s ago is late, not missed
    due = due_slots(schedule(1.0), at(seconds=10.5), NOW, "skip", since=at(seconds=2))
    assert due.fire == [at(seconds=0.5)] and due.missed == 10
    due = due_slots(schedule(10), at(seconds=10.9), NOW, "skip", grace=1.0)
    assert due.fire == [at(seconds=0.9)] and due.missed == 1
    assert due_slots(schedule(10), at(seconds=11.1), NOW, "skip", grace=1.0).fire == []


def test_all_fires_each_missed_slot_in_order():
    due = due_slots(schedule(1.0), at(seconds=5.5), NOW, "all")
    assert due.fire == [at(seconds=4.5 - k) for k in range(5)]
    assert due.record == at(seconds=0.5) and due.missed == 5
    due = due_slots(crontab(minute=0), at(hours=4), NOW, "all")
    assert [d.hour for d in due.fire] == [9, 10, 11, 12]


def test_all_is_capped_and_skips_the_rest():
    due = due_slots(schedule(1.0), at(seconds=500.5), NOW, "all")
    assert len(due.fire) == ALL_CAP and due.fire[0] == at(seconds=499.5)
    assert due.record == at(seconds=0.5) and due.missed == 500
    assert len(due_slots(schedule(1.0), at(seconds=50.5), NOW, "all", cap=7).fire) == 7


def test_long_outages_are_cheap_and_land_on_the_latest_slot():
    due = due_slots(crontab(), at(days=400), NOW, "once")  # every minute, ~576,000 missed
    assert due.fire == [datetime(2024, 3, 10, 12, 0, tzinfo=UTC)] and due.missed > 10_000
    rare = crontab(minute="*", hour=3, day_of_month=1, month_of_year=1)  # 60 minutes a year
    due = due_slots(rare, datetime(1990, 1, 1, tzinfo=UTC), NOW, "once")
    assert due.fire == [datetime(2024, 1, 1, 3, 59, tzinfo=UTC)] and due.missed == 35 * 60
    rel = schedule(0.01, relative=True)
    assert due_slots(rel, at(days=30), NOW, "once").fire == [NOW]


def test_relative_interval_keeps_its_grid():
    sched = schedule(600, relative=True)
    due = due_slots(sched, datetime(2024, 3, 10, 11, 10, tzinfo=UTC), NOW, "all")
    assert [d.minute for d in due.fire] == [20, 30, 40, 50, 0]


def test_crontab_in_a_time_zone():
    paris = crontab(minute=0, hour=13).with_tz("Europe/Paris")  # 12:00 UTC in winter
    due = due_slots(paris, at(days=2), NOW, "once")
    assert due.fire == [datetime(2024, 3, 10, 12, tzinfo=UTC)] and due.missed == 2


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="policy"):
        due_slots(schedule(1), None, NOW, "twice")
