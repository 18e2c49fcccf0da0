"""Celery-compatible periodic schedules (pure: no Redis, no I/O).

Two schedule kinds share one interface used by the beat scheduler:
``crontab`` (wall-clock cron fields) and ``schedule`` (fixed interval).

* Time zones: each schedule has an optional ``tz`` (name or tzinfo); ``None``
  means "not set" and is evaluated as UTC (the beat scheduler fills it in with
  the app's timezone via ``with_tz``). Crontab fields are wall-clock times in
  that zone. Every input datetime may be aware or naive (naive = UTC); every
  returned datetime is aware UTC.
* ``next_after(last_run, now)`` is the first due instant strictly after
  ``last_run`` (it may lie before ``now``: the entry is overdue). When
  ``last_run`` is None, a crontab returns its first slot strictly after
  ``now`` while an interval returns ``now`` itself (Celery fires interval
  entries on first start).
* DST rule for crontab (the PEP 495 ``fold=0`` reading of a wall time):
  a wall time skipped by spring-forward is shifted forward by the gap length
  (02:30 in a 02:00->03:00 gap fires at 03:30 DST); a wall time repeated by
  fall-back fires only at its first occurrence. Several wall times mapping to
  the same instant fire once. So ``0 * * * *`` fires once per wall-clock hour:
  once per real hour in spring, and not in the repeated hour in autumn.
* ``relative=True`` intervals fire on instants whose local wall time is a
  multiple of the interval (counted from 1970-01-01 00:00 local), e.g. every
  30 min -> :00 and :30; being an interval they keep firing every real
  interval across DST changes (the repeated hour gets its own firings).
"""
from __future__ import annotations

import copy
import heapq
from collections.abc import Iterable, Iterator
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Optional, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["BaseSchedule", "crontab", "schedule", "to_schedule"]

UTC = timezone.utc
TzArg = Union[str, tzinfo, None]
_EPOCH = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)
_SEARCH_DAYS = 366 * 200  # satisfiable specs always match within ~40 years

_DOW_NAMES = {n: i for i, names in enumerate(
    [("sun", "sunday"), ("mon", "monday"), ("tue", "tues", "tuesday"),
     ("wed", "wednesday"), ("thu", "thur", "thurs", "thursday"),
     ("fri", "friday"), ("sat", "saturday")]) for n in names}
_MONTH_NAMES = {n: i + 1 for i, n in enumerate(
    "jan feb mar apr may jun jul aug sep oct nov dec".split())}
_MONTH_NAMES.update({n: i + 1 for i, n in enumerate(
    ("january february march april may june july august september october "
     "november december").split())})
# field -> (min, max, names); day_of_week also accepts 7 as Sunday.
_FIELDS = {
    "minute": (0, 59, {}),
    "hour": (0, 23, {}),
    "day_of_week": (0, 6, _DOW_NAMES),
    "day_of_month": (1, 31, {}),
    "month_of_year": (1, 12, _MONTH_NAMES),
}
_MAX_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30,
             7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


def _coerce_tz(tz: TzArg) -> Optional[tzinfo]:
    """Normalise a tz argument (IANA name or tzinfo) to a tzinfo or None."""
    if tz is None or isinstance(tz, tzinfo):
        return tz
    if isinstance(tz, str):
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {tz!r}") from exc
    raise TypeError(f"tz must be a zone name, a tzinfo or None, not {type(tz).__name__}")


def _as_utc(dt: datetime) -> datetime:
    """Return ``dt`` as an aware UTC datetime; naive input is taken as UTC."""
    if not isinstance(dt, datetime):
        raise TypeError(f"expected a datetime, got {type(dt).__name__}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


class BaseSchedule:
    """Shared time-zone handling and the derived parts of the interface."""

    _tz: Optional[tzinfo] = None

    @property
    def tz(self) -> Optional[tzinfo]:
        """The tz given by the user (None = unset, evaluated as UTC)."""
        return self._tz

    @property
    def zone(self) -> tzinfo:
        """The effective zone used for wall-clock computations."""
        return self._tz if self._tz is not None else UTC

    def with_tz(self, tz: TzArg) -> "BaseSchedule":
        """Return a copy evaluated in ``tz`` (used to apply the app timezone)."""
        clone = copy.copy(self)
        clone._tz = _coerce_tz(tz)
        return clone

    def next_after(self, last_run: Optional[datetime], now: datetime) -> datetime:
        raise NotImplementedError

    def slots_between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        raise NotImplementedError

    def remaining(self, last_run: Optional[datetime], now: datetime) -> float:
        """Seconds from ``now`` until the next due time (<= 0 means due)."""
        return (self.next_after(last_run, now) - _as_utc(now)).total_seconds()


# ----------------------------------------------------------------- crontab ---

def _parse_field(field: str, spec: object) -> frozenset[int]:
    """Expand one crontab field spec (int, str or iterable) to a value set."""
    lo, hi, names = _FIELDS[field]
    top = 7 if field == "day_of_week" else hi

    def err(msg: str) -> ValueError:
        return ValueError(f"crontab {field}={spec!r}: {msg}")

    def number(tok: object) -> int:
        if isinstance(tok, str):
            key = tok.strip().lower()
            if key in names:
                return names[key]
            if not key.isdigit():
                raise err(f"cannot parse {tok!r}")
            tok = int(key)
        if isinstance(tok, bool) or not isinstance(tok, int):
            raise err(f"expected int or str, got {type(tok).__name__}")
        if not lo <= tok <= top:
            raise err(f"{tok} is out of range {lo}-{top}")
        return tok

    def expand(text: str) -> set[int]:
        out: set[int] = set()
        for part in text.split(","):
            rng, slash, step_s = part.strip().partition("/")
            rng, step = rng.strip(), 1
            if slash:
                if not step_s.strip().isdigit() or int(step_s) < 1:
                    raise err(f"invalid step {step_s!r}")
                step = int(step_s)
            if not rng:
                raise err("empty item")
            if rng == "*":
                seq = list(range(lo, hi + 1))
            elif "-" in rng:
                a_s, _, b_s = rng.partition("-")
                a, b = number(a_s), number(b_s)
                seq = (list(range(a, b + 1)) if a <= b else  # wraps, e.g. fri-mon
                       list(range(a, hi + 1)) + list(range(lo, b + 1)))
            else:
                a = number(rng)
                seq = list(range(a, hi + 1)) if slash else [a]
            out.update(seq[::step])
        return out

    if isinstance(spec, str):
        values = expand(spec)
    elif isinstance(spec, int) and not isinstance(spec, bool):
        values = {number(spec)}
    elif isinstance(spec, Iterable):
        values = set()
        for item in spec:
            values |= expand(item) if isinstance(item, str) else {number(item)}
    else:
        raise err(f"unsupported type {type(spec).__name__}")
    if field == "day_of_week" and 7 in values:
        values = (values - {7}) | {0}
    if not values:
        raise err("matches no value")
    return frozenset(values)


def _spec_str(spec: object) -> str:
    if isinstance(spec, Iterable) and not isinstance(spec, str):
        return ",".join(str(v) for v in sorted(spec, key=str))
    return str(spec)


class crontab(BaseSchedule):
    """Cron-style schedule evaluated on the wall clock of ``tz``.

    Day of month and day of week must *both* match (Celery semantics, not
    Vixie cron's OR). See the module docstring for the DST rule.
    """

    def __init__(self, minute: object = "*", hour: object = "*",
                 day_of_week: object = "*", day_of_month: object = "*",
                 month_of_year: object = "*", *, tz: TzArg = None) -> None:
        self._orig = (minute, hour, day_of_month, month_of_year, day_of_week)
        self.minute = _parse_field("minute", minute)
        self.hour = _parse_field("hour", hour)
        self.day_of_week = _parse_field("day_of_week", day_of_week)
        self.day_of_month = _parse_field("day_of_month", day_of_month)
        self.month_of_year = _parse_field("month_of_year", month_of_year)
        if not any(d <= _MAX_DAYS[m] for m in self.month_of_year for d in self.day_of_month):
            raise ValueError(f"crontab day_of_month={day_of_month!r} never occurs in "
                             f"month_of_year={month_of_year!r}")
        self._tz = _coerce_tz(tz)
        self._times = sorted(time(h, m) for h in self.hour for m in self.minute)

    def _key(self) -> tuple[object, ...]:
        return (self.minute, self.hour, self.day_of_week, self.day_of_month,
                self.month_of_year, self._tz)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, crontab):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        tz = f" tz={self._tz}" if self._tz is not None else ""
        fields = " ".join(_spec_str(s) for s in self._orig)
        return f"<crontab: {fields} (m/h/dM/MY/d){tz}>"

    def _day_matches(self, d: date) -> bool:
        return (d.month in self.month_of_year and d.day in self.day_of_month
                and d.isoweekday() % 7 in self.day_of_week)

    def _day_instants(self, d: date) -> list[datetime]:
        """UTC instants of day ``d``'s slots (fold=0 reading; may be unsorted)."""
        zone = self.zone
        return [datetime.combine(d, t, zone).astimezone(UTC) for t in self._times]

    def _lower_bound(self, d: date) -> datetime:
        """An instant no later than any slot on day ``d`` or later."""
        midnight = datetime.combine(d, time(0), self.zone)
        return min(midnight.astimezone(UTC), midnight.replace(fold=1).astimezone(UTC))

    def _iter_after(self, after: datetime) -> Iterator[datetime]:
        """Yield due instants strictly after ``after``, ascending, deduplicated.

        Days are scanned in wall-clock order; because DST can map a wall time
        to a later instant than the next one, instants are buffered in a heap
        and released only once no later day can produce an earlier instant.
        """
        after = _as_utc(after)
        # A wall time more than a day before ``after`` can never map past it.
        day = after.astimezone(self.zone).date() - timedelta(days=1)
        heap: list[datetime] = []
        last: Optional[datetime] = None
        idle = 0
        while True:
            if heap:
                bound = self._lower_bound(day)
                while heap and heap[0] < bound:
                    t = heapq.heappop(heap)
                    if t != last:
                        last, idle = t, 0
                        yield t
            if self._day_matches(day):
                for t in self._day_instants(day):
                    if t > after:
                        heapq.heappush(heap, t)
            idle += 1
            if idle > _SEARCH_DAYS:
                raise RuntimeError(f"{self!r} has no due time after {after}")
            day += timedelta(days=1)

    def next_after(self, last_run: Optional[datetime], now: datetime) -> datetime:
        """First slot strictly after ``last_run`` (or after ``now`` if None)."""
        return next(self._iter_after(now if last_run is None else last_run))

    def slots_between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """Slots in ``(start, end]``, earliest first, at most ``limit``."""
        end = _as_utc(end)
        out: list[datetime] = []
        if limit <= 0 or end <= _as_utc(start):
            return out
        for t in self._iter_after(start):
            if t > end:
                break
            out.append(t)
            if len(out) >= limit:
                break
        return out


# ---------------------------------------------------------------- interval ---

class schedule(BaseSchedule):
    """Fixed-interval schedule (Celery's ``schedule``).

    Plain intervals are anchored at the last run (``last_run + run_every``);
    ``relative=True`` snaps due times to multiples of the interval on the
    local wall clock of ``tz`` (every 30 min -> :00/:30, every day -> midnight).
    """

    def __init__(self, run_every: Union[int, float, timedelta],
                 relative: bool = False, *, tz: TzArg = None) -> None:
        if isinstance(run_every, bool) or not isinstance(run_every, (int, float, timedelta)):
            raise TypeError("run_every must be seconds (int/float) or a timedelta, "
                            f"not {type(run_every).__name__}")
        if not isinstance(run_every, timedelta):
            run_every = timedelta(seconds=run_every)
        if run_every <= timedelta(0):
            raise ValueError(f"run_every must be positive, got {run_every!r}")
        self.run_every = run_every
        self.relative = bool(relative)
        self._tz = _coerce_tz(tz)

    @property
    def seconds(self) -> float:
        """The interval in seconds."""
        return self.run_every.total_seconds()

    def _key(self) -> tuple[object, ...]:
        return (self.run_every, self.relative, self._tz)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, schedule):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        extra = (", relative=True" if self.relative else "") + (
            f", tz={self._tz}" if self._tz is not None else "")
        return f"<schedule: every {self.run_every}{extra}>"

    def _offset(self, t: datetime) -> timedelta:
        return t.astimezone(self.zone).utcoffset() or timedelta(0)

    def _next_aligned(self, after: datetime) -> datetime:
        """First instant > ``after`` whose local wall time is a multiple of the interval."""
        cur, inclusive = after, False
        for _ in range(64):
            off = self._offset(cur)
            rem = (cur.replace(tzinfo=None) + off - _EPOCH) % self.run_every
            if inclusive and not rem:
                return cur
            cand = cur + (self.run_every - rem)
            if self._offset(cand) == off:
                return cand
            # The UTC offset changes in (cur, cand]: bisect for the transition
            # and restart the alignment from it with the new offset.
            lo, hi = cur, cand
            while hi - lo > _US:
                mid = lo + ((hi - lo) // 2 // _US) * _US
                if self._offset(mid) == off:
                    lo = mid
                else:
                    hi = mid
            cur, inclusive = hi, True
        raise RuntimeError(f"{self!r}: could not align after {after}")  # pragma: no cover

    def next_after(self, last_run: Optional[datetime], now: datetime) -> datetime:
        """``last_run + run_every`` (aligned if relative); ``now`` if never run."""
        if last_run is None:
            return _as_utc(now)
        last_run = _as_utc(last_run)
        if self.relative:
            return self._next_aligned(last_run)
        return last_run + self.run_every

    def slots_between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """Due times in ``(start, end]`` counting from a run at ``start``, at most ``limit``."""
        start, end = _as_utc(start), _as_utc(end)
        out: list[datetime] = []
        if limit <= 0 or end <= start:
            return out
        if not self.relative:
            count = min(limit, (end - start) // self.run_every)
            return [start + self.run_every * k for k in range(1, count + 1)]
        t = self._next_aligned(start)
        while t <= end and len(out) < limit:
            out.append(t)
            t = self._next_aligned(t)
        return out


def to_schedule(value: object) -> BaseSchedule:
    """Coerce a beat ``schedule`` value: seconds or timedelta -> ``schedule``."""
    if isinstance(value, BaseSchedule):
        return value
    if isinstance(value, timedelta) or (
            isinstance(value, (int, float)) and not isinstance(value, bool)):
        return schedule(value)
    raise TypeError("a beat schedule must be a number of seconds, a timedelta, "
                    f"a crontab or a schedule, not {type(value).__name__}: {value!r}")
