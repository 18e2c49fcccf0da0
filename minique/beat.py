"""The periodic task scheduler (Celery beat), safe to run on several hosts at once.

* Entries come from ``app.conf.beat_schedule`` and are validated when a
  :class:`Beat` is created; a bad entry raises ConfigurationError naming it.
* Leader election: every beat process competes for one Redis lease
  (``keys.lock("beat")``, ``SET NX PX``). The leader renews it every third of
  ``beat_lease_seconds`` (compare-and-pexpire) and releases it on a clean exit
  (compare-and-del); a standby retries about every third of the lease, so it
  takes over at most about one lease after the leader died. A leader that
  cannot renew stops firing when its lease runs out by its own clock.
* Never twice per slot: the last run of each entry lives in the hash
  ``keys.BEAT_LAST``. Before sending, a slot is claimed by a Lua
  compare-and-set on that hash (it must still hold the value the decision was
  based on), so two beats that briefly both think they lead (lease expiry race)
  cannot both send a slot. Each run gets a new task id (a UUID, as Celery's);
  the slot's deterministic key (``beat:<entry>:<slot ms>``, :meth:`Beat.slot_key`)
  travels in the message header ``beat_key``, so a slot is recognisable wherever
  it lands, and the claim on that slot is what makes it fire once.
  The claim comes first: a crash between claim and send loses that one run
  (at most once, like Celery).
* Missed runs (nobody was up) follow ``beat_missed_policy``: see :func:`due_slots`.
* Clock: due times use ``time.time()`` of the host running the leader; slots
  derive from the stored last run, so clock skew between beat hosts shifts
  when a slot fires but cannot make it fire twice.
* The loop sleeps until the next due entry, lease renewal or
  ``beat_max_loop_interval``, whichever is first; :meth:`Beat.stop` wakes it.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, cast

import redis

from . import keys
from .exceptions import ConfigurationError
from .logs import Once
from .lua import Scripts
from .schedules import BaseSchedule, schedule as interval, to_schedule
from .signals import beat_init

__all__ = ["Beat", "Entry", "Due", "due_slots", "parse_entries", "run_beat", "POLICIES"]

logger = logging.getLogger("minique.beat")
SCRIPTS = Scripts(Path(__file__).parent / "beat_lua")
UTC = timezone.utc
POLICIES = ("once", "skip", "all")
ALL_CAP = 100          # "all" fires at most this many missed slots per entry
COUNT_CAP = 10_000     # missed slots counted exactly up to this many
SKIP_GRACE = 1.0       # "skip" without a leader-since time: a slot this late (s) is still on time
BEAT_KEY_HEADER = "beat_key"  # the header carrying a run's slot key (Beat.slot_key)
_ENTRY_KEYS = {"task", "schedule", "args", "kwargs", "options", "relative"}


@dataclass(frozen=True)
class Entry:
    """One validated beat entry; ``schedule`` already carries its time zone."""

    name: str
    task: str
    schedule: BaseSchedule
    args: Tuple[Any, ...] = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)
    options: Dict[str, Any] = field(default_factory=dict)


class Due(NamedTuple):
    """What to do about one entry now (see :func:`due_slots`)."""

    fire: List[datetime]         # slots to send, earliest first
    record: Optional[datetime]   # new last run to store (None: nothing to store)
    missed: int                  # slots due now (counted up to COUNT_CAP + 1)


def parse_entries(beat_schedule: Any, tz: Any = None, app: Any = None) -> Dict[str, Entry]:
    """Validate ``beat_schedule`` into Entries; ``tz`` applies to schedules without one.

    With ``app``, each entry's message is also built once, so that bad options or
    arguments that cannot be serialized fail at start rather than at send time.
    """
    if not isinstance(beat_schedule, dict):
        raise ConfigurationError(f"beat_schedule must be a dict of name -> entry, not {type(beat_schedule).__name__}")
    out: Dict[str, Entry] = {}
    for name, spec in beat_schedule.items():
        def bad(msg: str) -> ConfigurationError:
            # called only within this iteration, so the late-bound ``name`` is this entry's
            return ConfigurationError(f"beat_schedule entry {name!r}: {msg}")  # noqa: B023
        if not isinstance(name, str) or not name:
            raise bad("the entry name must be a non-empty string")
        if not isinstance(spec, dict):
            raise bad(f"must be a dict, not {type(spec).__name__}")
        unknown = set(spec) - _ENTRY_KEYS
        if unknown:
            raise bad(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_ENTRY_KEYS)}")
        task = spec.get("task")
        if not isinstance(task, str) or not task:
            raise bad("'task' must be a task name (non-empty string)")
        if "schedule" not in spec:
            raise bad("'schedule' is missing")
        try:
            sched = to_schedule(spec["schedule"])
            if spec.get("relative"):
                if not isinstance(sched, interval):
                    raise ValueError("'relative' applies only to interval schedules")
                sched = interval(sched.run_every, relative=True, tz=sched.tz)
            if sched.tz is None:
                sched = sched.with_tz(tz)
        except (TypeError, ValueError) as exc:
            raise bad(str(exc)) from exc
        args, kwargs, options = spec.get("args") or (), spec.get("kwargs") or {}, spec.get("options") or {}
        if not isinstance(args, (list, tuple)):
            raise bad(f"'args' must be a list or tuple, not {type(args).__name__}")
        if not isinstance(kwargs, dict):
            raise bad(f"'kwargs' must be a dict, not {type(kwargs).__name__}")
        if not isinstance(options, dict):
            raise bad(f"'options' must be a dict, not {type(options).__name__}")
        if "task_id" in options:
            raise bad("'options' may not set task_id: beat gives each run a new one")
        if not isinstance(options.get("headers") or {}, dict):
            raise bad(f"'headers' in 'options' must be a dict, not {type(options['headers']).__name__}")
        entry = Entry(name, task, sched, tuple(args), dict(kwargs), dict(options))
        if app is not None:
            try:
                app.build_message(task, entry.args, entry.kwargs, {**entry.options, "task_id": "check"})
            except (TypeError, ValueError) as exc:
                raise bad(f"cannot build its message: {exc}") from exc
        out[name] = entry
    return out


def _latest_slot(sched: BaseSchedule, first: datetime, now: datetime) -> datetime:
    """The last slot <= ``now``, knowing ``first`` <= now is one; cheap for long gaps."""
    if isinstance(sched, interval) and not sched.relative:
        return first + sched.run_every * ((now - first) // sched.run_every)
    step, hi = timedelta(minutes=1), now
    while True:  # widen a window back from now until it holds a slot...
        lo = max(first, now - step)
        found = sched.slots_between(lo, now, COUNT_CAP)
        if 0 < len(found) < COUNT_CAP:
            return found[-1]
        if found:
            break
        if lo == first:
            return first
        hi, step = lo, step * 2
    while True:  # ...then bisect: (lo, now] holds too many slots to list, (hi, now] fewer
        mid = lo + (hi - lo) / 2
        found = sched.slots_between(mid, now, COUNT_CAP)
        if not found:
            hi = mid
        elif len(found) < COUNT_CAP:
            return found[-1]
        else:
            lo = mid


def due_slots(sched: BaseSchedule, last_run: Optional[datetime], now: datetime, policy: str = "once", *,
              cap: int = ALL_CAP, since: Optional[datetime] = None, grace: float = SKIP_GRACE) -> Due:
    """Decide, without I/O, which slots of one entry to send at ``now``.

    ``last_run`` is the stored last run (None: never ran). Nothing is due when
    the next slot lies after ``now``; a never-run crontab then records ``now``
    as its baseline, so its next slot fires (no catch-up for time before it).
    A never-run interval is due at once (Celery does this). When several slots
    are due (beat was down), ``policy`` decides:

    * ``once``: send one catch-up run, the latest due slot.
    * ``skip``: send nothing, unless the latest slot is not older than ``since``
      (when this beat became leader: that slot fell due while it ran, it was
      not missed) or, without ``since``, at most ``grace`` s old.
    * ``all``: send every due slot, the earliest ``cap`` of them; skip the rest.

    In every case the latest due slot becomes the last run, so the schedule
    keeps its grid and the next due time lies in the future.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown missed-run policy {policy!r}; use one of {POLICIES}")
    first = sched.next_after(last_run, now)
    if first > now:
        return Due([], now if last_run is None else None, 0)
    latest = _latest_slot(sched, first, now)
    if isinstance(sched, interval) and not sched.relative:
        missed = min(COUNT_CAP, (now - first) // sched.run_every) + 1
    else:
        missed = len(sched.slots_between(first, now, COUNT_CAP)) + 1
    if policy == "all":
        fire = [first] + sched.slots_between(first, now, cap - 1)
    elif policy == "once" or latest >= (since if since is not None else now - timedelta(seconds=grace)):
        fire = [latest]
    else:
        fire = []
    return Due(fire, latest, missed)


def _epoch_str(dt: datetime) -> str:
    return repr(dt.timestamp())


def _from_epoch(raw: Any) -> Optional[datetime]:
    """A stored last run; None for never, and for a malformed value (not a time: the entry is then
    treated as never run, and its next claim overwrites the value, see claim.lua)."""
    if raw in (None, b"", ""):
        return None
    try:
        return datetime.fromtimestamp(float(raw), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


class Beat:
    """One beat process: competes for leadership and, while leader, sends due entries.

    ``stop_event`` (optional) lets a caller share the event that stops the loop.
    """

    def __init__(self, app: Any, *, hostname: Optional[str] = None,
                 stop_event: Optional[threading.Event] = None) -> None:
        conf = app.conf
        self.app = app
        self.hostname = hostname or f"beat@{socket.gethostname()}:{os.getpid()}"
        self.schedule = parse_entries(conf.beat_schedule or {}, conf.timezone, app)
        self.policy = conf.beat_missed_policy
        if self.policy not in POLICIES:
            raise ConfigurationError(f"beat_missed_policy must be one of {POLICIES}, not {self.policy!r}")
        self.lease = float(conf.beat_lease_seconds)
        self.max_interval = float(conf.beat_max_loop_interval)
        if self.lease <= 0 or self.max_interval <= 0:
            raise ConfigurationError("beat_lease_seconds and beat_max_loop_interval must be positive")
        # its own connection, with a timeout under the lease: a hung connection must not keep a
        # leader blocked past its lease (another beat takes over; the claims keep slots single)
        self.client: redis.Redis = app._connect(app.conf.broker_url, socket_timeout=max(0.5, self.lease / 3),
                                                retries=1)
        self.lock_key = keys.lock("beat")
        self.token = f"{self.hostname}:{uuid.uuid4().hex}"
        self.leadership = threading.Event()   # set while this beat leads (tests wait on it)
        self._report = Once(logger)           # errors of the loop and bad stored state, once per kind
        self._stop = stop_event or threading.Event()
        self._leader = False
        self._leader_since = 0.0     # time.time() when we last became leader
        self._lease_until = 0.0      # monotonic: our lease surely lasts until then
        self._next_lease_op = 0.0    # monotonic: next renewal / acquisition attempt
        self._abandoned = False

    # --- leadership ---------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        """True while we hold the lease by our own clock (it may be renewed later)."""
        return self._leader and time.monotonic() < self._lease_until

    def _set_leader(self, leader: bool, why: str) -> None:
        if leader != self._leader:
            state = "is now the leader" if leader else "is no longer the leader"
            logger.info("beat: %s %s (%s)", self.hostname, state, why)
            self._leader_since = time.time()
        self._leader = leader
        (self.leadership.set if leader else self.leadership.clear)()

    def _lease_step(self) -> None:
        """Renew the lease (leader) or try to take it (standby); schedules the next attempt."""
        started, third = time.monotonic(), self.lease / 3
        px = int(self.lease * 1000)
        wait = third
        try:
            if self._leader and SCRIPTS(self.client, "renew", [self.lock_key], [self.token, px]):
                self._lease_until = started + self.lease
            else:
                pipe = self.client.pipeline(transaction=False)
                pipe.set(self.lock_key, self.token, nx=True, px=px)
                pipe.pttl(self.lock_key)
                acquired, pttl = pipe.execute()
                if acquired:
                    self._lease_until = started + self.lease
                    self._set_leader(True, "lease acquired")
                    self._forget_removed()
                else:
                    self._set_leader(False, "lease held by another beat")
                    if isinstance(pttl, int) and pttl != -1:  # retry right when it expires
                        wait = min(third, max(pttl, 0) / 1000 + 0.005)
        except redis.RedisError as exc:
            logger.warning("beat: lease renewal failed: %r", exc)
            wait = min(third, 1.0)
            if self._leader and time.monotonic() >= self._lease_until:
                self._set_leader(False, "lease expired while Redis was unreachable")
        self._next_lease_op = started + wait

    def _forget_removed(self) -> None:
        """A new leader drops the stored last runs of entries no longer in its schedule."""
        names = cast(List[bytes], self.client.hkeys(keys.BEAT_LAST))  # redis-py: bytes | str; decode_responses off
        stale = [k for k in names if k.decode() not in self.schedule]
        if stale:
            self.client.hdel(keys.BEAT_LAST, *stale)
            self.client.hdel(keys.BEAT_LAG, *stale)
            logger.info("beat: forgot the state of %d removed entr%s: %s", len(stale),
                        "y" if len(stale) == 1 else "ies", ", ".join(k.decode() for k in stale))

    def _release(self) -> None:
        if self._leader:
            try:
                SCRIPTS(self.client, "release", [self.lock_key], [self.token])
            except redis.RedisError as exc:
                logger.warning("beat: could not release the lease: %r", exc)
            self._set_leader(False, "released on exit")

    # --- scheduling ---------------------------------------------------------------------------------
    def _read_last(self, names: List[str]) -> List[Any]:
        """Raw stored last runs of ``names`` (None where never run)."""
        return self.client.hmget(keys.BEAT_LAST, names) if names else []

    def _claim(self, name: str, prev_raw: str, slot: datetime) -> Tuple[bool, str]:
        """Compare-and-set the entry's last run from ``prev_raw`` to ``slot``; returns (won, current)."""
        won, current = SCRIPTS(self.client, "claim", [keys.BEAT_LAST], [name, prev_raw, _epoch_str(slot)])
        return bool(won), current.decode() if isinstance(current, bytes) else str(current)

    @staticmethod
    def slot_key(name: str, slot: datetime) -> str:
        """The deterministic key of an entry's slot (in the header ``beat_key`` of the run's message)."""
        return f"beat:{name}:{round(slot.timestamp() * 1000)}"

    def _apply(self, entry: Entry, prev_raw: str, due: Due) -> str:
        """Claim and send the slots of ``due``; returns the last run now stored."""
        if due.missed > 1:
            told = f"at least {due.missed}" if due.missed > COUNT_CAP else str(due.missed)
            logger.warning("beat: entry %s missed %s runs (policy %r): sending %d of them",
                           entry.name, told, self.policy, len(due.fire))
        steps = [(slot, True) for slot in due.fire]
        if due.record is not None and (not due.fire or due.record > due.fire[-1]):
            steps.append((due.record, False))
        for slot, send in steps:
            if not self.is_leader or self._stop.is_set():
                break
            won, prev_raw = self._claim(entry.name, prev_raw, slot)
            if not won:
                logger.debug("beat: %s slot %s was claimed by another beat", entry.name, slot)
                break
            if send:
                logger.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
                try:
                    options = dict(entry.options)
                    options["headers"] = {**(options.get("headers") or {}),
                                          BEAT_KEY_HEADER: self.slot_key(entry.name, slot)}
                    self.app.send_task(entry.task, list(entry.args), dict(entry.kwargs),
                                       task_id=str(uuid.uuid4()), **options)
                except Exception as exc:  # the slot stays claimed: at most once
                    logger.error("beat: Message Error: could not send %s (%s): %r",
                                 entry.name, entry.task, exc, exc_info=True)
                    continue
                # how late it went out (the dashboard's minique_beat_lag_seconds); a lost write only loses that
                try:
                    self.client.hset(keys.BEAT_LAG, entry.name, f"{max(0.0, time.time() - slot.timestamp()):.6f}")
                except redis.RedisError as exc:
                    logger.debug("beat: could not record the lag of %s: %r", entry.name, exc)
        return prev_raw

    def tick(self) -> float:
        """One iteration: keep the lease, send what is due; returns seconds until the next wake."""
        if time.monotonic() >= self._next_lease_op:
            self._lease_step()
        wake = self.max_interval
        if self.is_leader:
            names = list(self.schedule)
            # (a value that is not ASCII stays bytes: malformed, and the claim compares it as stored)
            raws = [r.decode() if isinstance(r, bytes) and r.isascii() else (r or "") for r in self._read_last(names)]
            now = datetime.fromtimestamp(time.time(), UTC)
            since = datetime.fromtimestamp(self._leader_since, UTC)
            for name, raw in zip(names, raws):
                entry = self.schedule[name]
                if raw and _from_epoch(raw) is None:
                    self._report(("last run", name), "beat: entry %s has a malformed last run %.40r in %s: "
                                 "taken as never run", name, raw, keys.BEAT_LAST, level=logging.WARNING)
                try:
                    due = due_slots(entry.schedule, _from_epoch(raw), now, self.policy, since=since)
                    if due.fire or due.record is not None:
                        raw = self._apply(entry, raw, due)
                    nxt = entry.schedule.next_after(_from_epoch(raw), now)
                except redis.RedisError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one entry's trouble never stops the others
                    self._report(("entry", name), "beat: entry %s failed: %r; the other entries go on", name, exc,
                                 exc_info=True)
                    continue
                wake = min(wake, nxt.timestamp() - time.time())
        return max(0.0, min(wake, self._next_lease_op - time.monotonic()))

    def entries(self) -> List[Tuple[str, str, BaseSchedule, datetime]]:
        """(name, task, schedule, next run) of every entry, by the stored last runs (for ``--list``)."""
        names = list(self.schedule)
        now = datetime.now(UTC)
        return [(n, self.schedule[n].task, self.schedule[n].schedule,
                 self.schedule[n].schedule.next_after(_from_epoch(raw), now))
                for n, raw in zip(names, self._read_last(names))]

    # --- the loop -----------------------------------------------------------------------------------
    def run(self) -> None:
        """Loop until :meth:`stop`; releases the lease on the way out."""
        if beat_init.receivers:
            beat_init.send(sender=self)
        logger.info("beat: Starting %s (lease %.1fs, missed-run policy %r, %d entries)",
                    self.hostname, self.lease, self.policy, len(self.schedule))
        try:
            for name, task, sched, nxt in self.entries():
                logger.info("beat: entry %s (%s) %r: next run at %s", name, task, sched, nxt.isoformat())
        except redis.RedisError as exc:
            logger.warning("beat: cannot read the schedule state yet: %r", exc)
        try:
            while not self._stop.is_set():
                try:
                    delay = self.tick()
                except redis.RedisError as exc:
                    logger.warning("beat: Redis error, retrying: %r", exc)
                    delay = min(1.0, self.lease / 3)
                except Exception as exc:  # noqa: BLE001 - the loop outlives any one turn's error
                    self._report("tick", "beat: a turn of the loop failed: %r; going on", exc, exc_info=True)
                    delay = min(1.0, self.lease / 3)
                self._stop.wait(max(delay, 0.001))
        finally:
            if not self._abandoned:
                self._release()
                self.client.close()
            logger.info("beat: %s stopped", self.hostname)

    def stop(self) -> None:
        """Ask the loop to exit (wakes it at once); safe from signal handlers and other threads."""
        self._stop.set()

    def _abandon(self) -> None:
        """Test hook: stop like a crash would, keeping the lease until it expires."""
        self._abandoned = True
        self._stop.set()


def run_beat(app: Any, loglevel: str = "INFO") -> int:
    """Run a beat until SIGTERM / SIGINT (the ``minique beat`` command); returns 0."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s")
    logger.setLevel(loglevel.upper() if isinstance(loglevel, str) else loglevel)
    beat = Beat(app)
    previous: Dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: beat.stop())
    try:
        beat.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _load_app(spec: str) -> Any:
    """The Minique app named by ``module`` or ``module:attr`` (Celery's -A rules), its modules imported."""
    from .discovery import find_app
    app = find_app(spec)
    app.set_current()
    app.import_modules()
    return app


if __name__ == "__main__":  # python -m minique.beat -A module[:attr]
    import argparse
    import sys
    parser = argparse.ArgumentParser(prog="python -m minique.beat", description=__doc__.split("\n")[0])
    parser.add_argument("-A", "--app", required=True, help="module or module:attr holding the Minique app")
    parser.add_argument("-l", "--loglevel", default="INFO")
    ns = parser.parse_args()
    sys.exit(run_beat(_load_app(ns.app), ns.loglevel))
