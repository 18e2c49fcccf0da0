"""What the dashboard knows: a bounded task index fed by the events stream, workers, queue history.

Three daemon threads keep it current:

* the follower reads `minique:events` (XREAD BLOCK, from the start of the capped stream)
  into `TaskIndex` (the last `max_tasks` tasks, oldest evicted first) and `WorkerBook`;
  events are untrusted data (any Redis client can add one): `events.Reader` drops malformed
  ones, and an error applying one event skips that event, never the follower;
* the sampler measures every queue (one pipelined round trip, see metrics.queue_sample)
  each `sample_interval` seconds into `QueueHistory` (a ring buffer: the chart);
* queue names are rediscovered with SCAN every `rescan_interval` (30 s; never KEYS), and
  queues named in task events are added as they appear; a queue that is empty, consumed by no
  online worker and named in no event for `prune_after` seconds is no longer listed, nor is a
  worker offline (or lost) for that long;
* the follower also counts succeeded, failed and retried tasks per 10 s into the
  `minique:throughput` hash (`Throughput`; each events entry once, whoever counts it, so a
  restarted dashboard, or a second one, does not count twice), which the throughput chart
  reads: its last hour survives a restart of the dashboard.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, List, Optional, Set, Tuple

import redis

from .. import events as events_mod, keys, serializers, states
from ..lua import Scripts

SCRIPTS = Scripts(Path(__file__).parent / "dashboard_lua")

log = logging.getLogger("minique.dashboard")

STATE_OF = {"task-received": states.RECEIVED, "task-started": states.STARTED, "task-retried": states.RETRY,
            "task-succeeded": states.SUCCESS, "task-failed": states.FAILURE, "task-revoked": states.REVOKED,
            "task-rejected": states.REJECTED, "task-throttled": "WAITING"}
# Within one delivery (same `retries`), later phases win; a later delivery (more retries) wins over earlier ones.
RANK = {"task-received": 1, "task-started": 2, "task-retried": 3, "task-succeeded": 4, "task-failed": 4,
        "task-revoked": 4, "task-rejected": 4, "task-throttled": 1}
TIME_FIELD = {"task-received": "received", "task-started": "started", "task-retried": "retried",
              "task-succeeded": "succeeded", "task-failed": "failed", "task-revoked": "revoked",
              "task-rejected": "rejected", "task-throttled": "throttled"}
COPY = ("name", "queue", "root_id", "parent_id", "group_id", "args", "kwargs", "exception", "reason", "runtime",
        "sent_at", "eta", "expires", "priority", "pid")
HISTORY = 30  # events kept per task


class TaskIndex:
    """The last `limit` tasks seen in events, with their latest state; thread-safe."""

    def __init__(self, limit: int = 10000):
        self.limit = limit
        self.tasks: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
        self.children: Dict[str, List[str]] = {}
        self.lock = threading.Lock()
        self.events_seen = 0
        self.names: Dict[str, int] = {}

    def apply(self, batch: Iterable[Dict[str, Any]]) -> None:
        with self.lock:
            for ev in batch:
                self.events_seen += 1
                kind = ev.get("type", "")
                if isinstance(kind, str) and kind.startswith("task-") and ev.get("uuid"):
                    try:
                        self._task_event(kind, ev)
                    except Exception:  # noqa: BLE001 - one event's trouble is its own (events.Reader checks types)
                        _skipped(f"cannot apply a {kind[:40]} event", ev.get("uuid"))

    def _task_event(self, kind: str, ev: Dict[str, Any]) -> None:
        tid = ev["uuid"]
        rec = self.tasks.get(tid)
        if rec is None:
            rec = {"id": tid, "state": states.PENDING, "retries": 0, "rank": (-1, 0), "history": []}
            self.tasks[tid] = rec
            if len(self.tasks) > self.limit:
                self._evict()
        retries = ev.get("retries")
        if retries is None:
            retries = rec["retries"]
        rank = (retries, RANK.get(kind, 0))
        if kind == "task-retried" or kind == "task-throttled":  # its eta: when it runs next (a retry, or
            ev = dict(ev)                                           # a start reserved under a rate limit)
            next_run = ev.pop("eta", None)
            if rank >= rec["rank"]:
                rec["next_run"] = next_run
                if kind == "task-throttled":
                    rec["waiting_for"] = ev.get("reason")
        elif kind in STATE_OF and (rank > rec["rank"] or rec.get("state") == "WAITING" and rank >= rec["rank"]):
            rec.pop("next_run", None)  # a later delivery (the retry itself) or this one's outcome
            rec.pop("waiting_for", None)
        for field in COPY:
            value = ev.get(field)
            if value is not None and (field not in rec or rank >= rec["rank"] or rec.get(field) is None):
                rec[field] = value
        if rec.get("name"):
            self.names[rec["name"]] = self.names.get(rec["name"], 0) + (1 if kind == "task-received" else 0)
        when = TIME_FIELD.get(kind)
        if when:
            rec[when] = ev.get("ts")
        if rank >= rec["rank"] and kind in STATE_OF:
            rec["rank"] = rank
            rec["state"] = STATE_OF[kind]
            rec["retries"] = retries
            if ev.get("hostname"):
                rec["worker"] = ev["hostname"]
        if kind == "task-failed" and ev.get("message") is not None:
            rec["message"] = ev["message"]  # what Retry re-sends (checked then: see server.Dashboard.retry)
        rec["updated"] = max(rec.get("updated") or 0, ev.get("ts") or 0)
        history = rec["history"]
        history.append({"type": kind, "ts": ev.get("ts"), "hostname": ev.get("hostname"), "retries": retries})
        if len(history) > HISTORY:
            del history[0]
        parent = ev.get("parent_id")
        if parent and parent != tid and kind in ("task-received", "task-started"):
            kids = self.children.setdefault(parent, [])
            if tid not in kids:
                kids.append(tid)

    def _evict(self) -> None:
        tid, rec = self.tasks.popitem(last=False)
        self.children.pop(tid, None)
        parent = rec.get("parent_id")
        kids = self.children.get(parent) if parent else None
        if parent and kids is not None:
            try:
                kids.remove(tid)
            except ValueError:
                pass
            if not kids:
                self.children.pop(parent, None)

    # --- reading -------------------------------------------------------------------------------------
    def get(self, tid: str) -> Optional[Dict[str, Any]]:
        with self.lock:
            rec = self.tasks.get(tid)
            return dict(rec, history=list(rec["history"])) if rec is not None else None

    def mark_resent(self, tid: str, at: float) -> None:
        """The failed task's message was sent again (Retry): it waits (PENDING) and the events of its
        new run count from the start, whatever their delivery count."""
        with self.lock:
            rec = self.tasks.get(tid)
            if rec is None:
                return
            for field in ("exception", "reason", "runtime", "message", *TIME_FIELD.values()):
                rec.pop(field, None)  # the failed run's outcome; its events stay in the history
            rec.update(state=states.PENDING, rank=(-1, 0), resent_at=at, resent=rec.get("resent", 0) + 1,
                       updated=at)
            rec["history"].append({"type": "re-sent (dashboard)", "ts": at, "hostname": None,
                                   "retries": rec.get("retries")})
            if len(rec["history"]) > HISTORY:
                del rec["history"][0]

    def fill(self, tid: str, fields: Dict[str, Any]) -> None:
        """Fields of a task the events did not give (a rejected message's name and arguments, read from its
        dead letter): only those still unknown."""
        with self.lock:
            rec = self.tasks.get(tid)
            if rec is None:
                return
            for k, v in fields.items():
                if v is not None and rec.get(k) is None:
                    rec[k] = v
            if rec.get("name"):
                self.names.setdefault(rec["name"], 0)

    def children_of(self, tid: str) -> List[Dict[str, Any]]:
        with self.lock:
            return [summary(self.tasks[c]) for c in self.children.get(tid, ()) if c in self.tasks]

    def summaries(self, state: Optional[str] = None, name: Optional[str] = None, worker: Optional[str] = None,
                  since: Optional[float] = None, until: Optional[float] = None, search: Optional[str] = None,
                  limit: int = 100, offset: int = 0) -> Dict[str, Any]:
        """Newest first, filtered; with the number matching and counts per state (of the filtered set)."""
        states_wanted = {s.strip().upper() for s in state.split(",")} if state else None
        out: List[Dict[str, Any]] = []
        counts: Dict[str, int] = {}
        matched = 0
        search = (search or "").strip().lower()
        with self.lock:
            for rec in reversed(self.tasks.values()):
                if name and rec.get("name") != name:
                    continue
                if worker and rec.get("worker") != worker:
                    continue
                ts = rec.get("received") or rec.get("started") or rec.get("updated") or 0
                if since and ts < since:
                    continue
                if until and ts > until:
                    continue
                if search and search not in rec["id"] and search not in (rec.get("args") or "").lower() \
                        and search not in (rec.get("kwargs") or "").lower():
                    continue
                counts[rec["state"]] = counts.get(rec["state"], 0) + 1
                if states_wanted and rec["state"] not in states_wanted:
                    continue
                matched += 1
                if offset < matched <= offset + limit:
                    out.append(summary(rec))
        return {"tasks": out, "total": matched, "counts": counts}

    def stats(self) -> Dict[str, Any]:
        with self.lock:
            counts: Dict[str, int] = {}
            for rec in self.tasks.values():
                counts[rec["state"]] = counts.get(rec["state"], 0) + 1
            return {"tasks": len(self.tasks), "limit": self.limit, "events_seen": self.events_seen,
                    "counts": counts, "names": sorted(self.names)}


def summary(rec: Dict[str, Any]) -> Dict[str, Any]:
    """A task as the list pages show it (no body, no history)."""
    return {k: rec.get(k) for k in ("id", "name", "state", "worker", "queue", "retries", "args", "kwargs",
                                    "received", "started", "succeeded", "failed", "retried", "revoked",
                                    "rejected", "updated", "runtime", "exception", "reason", "root_id",
                                    "parent_id", "group_id", "resent_at", "resent", "next_run")} | {
        "retryable": rec.get("message") is not None}


_told: Set[str] = set()


def _skipped(problem: str, task_id: Any) -> None:
    """Log an event the index could not apply: the first of each kind as a warning, later ones at debug level."""
    if problem in _told or len(_told) > 100:
        log.debug("skipped an event of task %r: %s", task_id, problem)
        return
    _told.add(problem)
    log.warning("skipped an event of task %r: %s (further ones like it are logged at debug level)", task_id,
                problem, exc_info=True)


OUTCOMES = frozenset({"task-succeeded", "task-failed", "task-retried", "task-revoked", "task-rejected"})
RECENT = 20000  # outcome times kept per worker (to count what it ran after its last heartbeat)


class WorkerBook:
    """Workers from the heartbeat hash, completed with their worker events (load, offline) and their
    task events: a worker's `processed` is its last heartbeat's count plus the tasks it reported ending
    after that heartbeat, so one that ran tasks just before it stopped shows them.

    A worker is `online` while its heartbeat is fresh and it did not say goodbye, `offline` after its
    worker-offline event, `lost` when its heartbeat stopped without one; a worker that is not online is
    no longer listed `prune_after` seconds after its last sign of life."""

    def __init__(self, app: Any, prune_after: float = 600.0):
        self.app = app
        self.prune_after = prune_after
        self.lock = threading.Lock()
        self.seen: Dict[str, Dict[str, Any]] = {}
        self.recent: Dict[str, Deque[float]] = {}  # per worker: when its latest tasks ended (event ts)

    def apply(self, batch: Iterable[Dict[str, Any]]) -> None:
        with self.lock:
            for ev in batch:
                kind = ev.get("type", "")
                host = ev.get("hostname")
                if not host:
                    continue
                if kind in OUTCOMES:
                    ends = self.recent.get(host)
                    if ends is None:
                        if len(self.recent) > 1000:
                            self.recent.pop(next(iter(self.recent)))
                        ends = self.recent[host] = deque(maxlen=RECENT)
                    ends.append(ev.get("ts") or 0.0)
                    continue
                if not kind.startswith("worker-"):
                    continue
                rec = self.seen.setdefault(host, {"hostname": host})
                rec["last_event"] = kind
                rec["event_ts"] = ev.get("ts")
                if kind == "worker-heartbeat":
                    rec["heartbeat_ts"] = ts = ev.get("ts") or 0.0
                    ends = self.recent.get(host)
                    while ends and ends[0] <= ts:  # counted in this heartbeat: only later ones matter
                        ends.popleft()
                for field in ("loadavg", "freq", "queues", "concurrency", "places", "pool", "processed", "active",
                              "started"):
                    if ev.get(field) is not None:
                        rec[field] = ev[field]
                if kind == "worker-offline":
                    rec["active"] = 0
                if len(self.seen) > 1000:
                    oldest = min(self.seen, key=lambda h: self.seen[h].get("event_ts") or 0)
                    self.seen.pop(oldest, None)

    def _ended_after(self, host: str, ts: Optional[float]) -> int:
        """Tasks `host` reported ending after `ts` (all it reported, without a heartbeat to count from)."""
        ends = self.recent.get(host)
        if not ends:
            return 0
        return len(ends) if ts is None else sum(1 for t in ends if t > ts)

    def list(self, all_workers: bool = False) -> List[Dict[str, Any]]:
        """The workers as the Workers page shows them (`all_workers`: the pruned ones too)."""
        now = time.time()
        interval = float(self.app.conf.worker_heartbeat_interval)
        raw = self.app.broker_client.hgetall(keys.WORKERS)
        out: Dict[str, Dict[str, Any]] = {}
        with self.lock:
            seen = {h: dict(r) for h, r in self.seen.items()}
            ended = {h: self._ended_after(h, r.get("heartbeat_ts")) for h, r in seen.items()}
            for host_b in raw:
                host = host_b.decode(errors="replace")
                if host not in ended:
                    ended[host] = 0
        for host_b, packed in raw.items():
            host = host_b.decode(errors="replace")
            try:  # a heartbeat any Redis client may have written: a map with a numeric ts, or skipped
                info = serializers.unpack(packed)
                ts = float(info.get("ts") or 0)
                age = now - ts
            except Exception:  # noqa: BLE001
                continue
            ev = seen.get(host, {})
            freq = float(ev.get("freq") or interval)
            said_goodbye = ev.get("last_event") == "worker-offline" and (ev.get("event_ts") or 0) >= ts
            status = "offline" if said_goodbye else ("online" if age < max(3 * freq, 6.0) else "lost")
            processed = info.get("processed")
            if isinstance(processed, int) and ev.get("heartbeat_ts") is not None and \
                    abs(float(ev["heartbeat_ts"]) - ts) < 1.0:  # the same heartbeat: add what ended after it
                processed += ended.get(host, 0)
            rec = {"hostname": host, "status": status,
                   "last_heartbeat": info.get("ts"), "heartbeat_age": age, "pid": info.get("pid"),
                   "pool": info.get("pool"), "concurrency": info.get("concurrency"), "places": info.get("places"),
                   "active": 0 if status != "online" else info.get("active"), "processed": processed,
                   "queues": info.get("queues"), "started": info.get("started"), "loadavg": ev.get("loadavg")}
            out[host] = rec
        for host, ev in seen.items():
            if host in out:
                continue
            processed = ev.get("processed")
            processed = (processed if isinstance(processed, int) else 0) + ended.get(host, 0)
            last = ev.get("event_ts")
            out[host] = {"hostname": host, "status": "offline" if ev.get("last_event") == "worker-offline" else "lost",
                         "last_heartbeat": last, "heartbeat_age": now - float(last or now), "pool": ev.get("pool"),
                         "concurrency": ev.get("concurrency"), "places": ev.get("places"), "active": 0,
                         "processed": processed,
                         "queues": ev.get("queues"), "loadavg": ev.get("loadavg"), "started": ev.get("started"),
                         "pid": None}
        listed = [r for r in out.values() if all_workers or r["status"] == "online"
                  or r["heartbeat_age"] < self.prune_after]
        return sorted(listed, key=lambda r: (r["status"] != "online", r["hostname"]))

    def online_queues(self) -> Set[str]:
        """The queues that online workers consume."""
        return {q for w in self.list() if w["status"] == "online" for q in (w.get("queues") or ())
                if isinstance(q, str)}


class QueueHistory:
    """Queue samples over time (a ring buffer) and the latest one."""

    def __init__(self, keep: int = 900):
        self.samples: Deque[Dict[str, Any]] = deque(maxlen=keep)
        self.lock = threading.Lock()

    def add(self, sample: Dict[str, Any]) -> None:
        with self.lock:
            self.samples.append(sample)

    def latest(self) -> Optional[Dict[str, Any]]:
        with self.lock:
            return self.samples[-1] if self.samples else None

    def series(self) -> List[Dict[str, Any]]:
        with self.lock:
            return [{"t": s["time"], "waiting": {q: i["waiting"] for q, i in s["queues"].items()},
                     "delayed": {q: i["delayed"] for q, i in s["queues"].items()},
                     "dead_letters": s["dead_letters"]} for s in self.samples]


BUCKET = 10     # seconds per throughput count
SPAN = 3600     # seconds of throughput kept and shown
_CODES = {"task-succeeded": "s", "task-failed": "f", "task-retried": "r"}
_SERIES = {"s": "succeeded", "f": "failed", "r": "retried"}


class Throughput:
    """Succeeded, failed and retried tasks per BUCKET seconds over the last SPAN seconds.

    Counted by the follower as it reads events, into the `minique:throughput` hash through
    throughput.lua, which counts each events entry once (by its id): a restarted dashboard reads
    the stream again from its start without counting twice, and the chart keeps the hour before it
    started. When Redis refuses the write (a dashboard user without the rule for it), the counts this
    dashboard made itself are shown instead (since what the capped stream held at its start)."""

    def __init__(self, client: Any):
        self.client = client
        self.lock = threading.Lock()
        self.local: Dict[Tuple[int, str], int] = {}
        self.shared = True
        self._pruned_at = 0.0

    def add(self, entries: List[Tuple[str, List[Dict[str, Any]]]]) -> None:
        now = time.time()
        oldest = int((now - SPAN) // BUCKET) * BUCKET
        args: List[Any] = []
        with self.lock:
            for entry_id, evs in entries:
                counts: Dict[Tuple[int, str], int] = {}
                for ev in evs:
                    code = _CODES.get(ev.get("type", ""))
                    if code is None:
                        continue
                    bucket = int(float(ev["ts"]) // BUCKET) * BUCKET
                    if bucket >= oldest:
                        counts[(bucket, code)] = counts.get((bucket, code), 0) + 1
                if counts:
                    args += [entry_id, len(counts)]
                    for (bucket, code), n in counts.items():
                        args += [bucket, code, n]
                        self.local[(bucket, code)] = self.local.get((bucket, code), 0) + n
            if now - self._pruned_at > 60:
                self.local = {k: v for k, v in self.local.items() if k[0] >= oldest}
        if not args or not self.shared:
            return
        prune = now - self._pruned_at > 60
        try:
            SCRIPTS(self.client, "throughput", [keys.THROUGHPUT], [SPAN + 600, oldest, "1" if prune else "0", *args])
        except redis.exceptions.ResponseError as exc:  # NOPERM (ACL) and the like: count in memory only
            self.shared = False
            log.warning("cannot keep the throughput counts in Redis (%s): the chart shows what this dashboard "
                        "counted since it started", exc)
        if prune:
            self._pruned_at = now

    def series(self) -> Dict[str, Any]:
        """Per-second rates of each BUCKET over the last SPAN, oldest first, and the counts of that hour."""
        now = time.time()
        first = int((now - SPAN) // BUCKET) * BUCKET + BUCKET
        counts: Dict[Tuple[int, str], int] = {}
        if self.shared:
            try:
                raw = self.client.hgetall(keys.THROUGHPUT)
            except redis.exceptions.ResponseError:
                raw = None
            for field, value in (raw or {}).items():
                bucket, _, code = field.decode(errors="replace").partition(":")
                if code in _SERIES and bucket.isdigit():
                    try:
                        counts[(int(bucket), code)] = int(value)
                    except ValueError:
                        continue  # (any Redis client can write the hash)
            source = "redis" if raw is not None else "memory"
        if not self.shared or source == "memory":
            with self.lock:
                counts = dict(self.local)
            source = "memory"
        n = (int(now // BUCKET) * BUCKET - first) // BUCKET + 1
        out: Dict[str, Any] = {"start": first, "bucket": BUCKET, "span": SPAN, "source": source, "now": now}
        for code, name in _SERIES.items():
            values = [counts.get((first + i * BUCKET, code), 0) for i in range(n)]
            out[name] = [v / BUCKET for v in values]
            out[f"{name}_total"] = sum(values)
        return out


def _dead_letter_fields(data: Any, security_key: Any) -> Dict[str, Any]:
    """What a dead letter's message says of its task, as the pages show it (never pickle; with
    `security_key` arguments only when the signature verifies)."""
    from ..display import describe_for_display
    shown = describe_for_display(data if isinstance(data, bytes) else b"", security_key)
    out = {"name": shown["name"]}
    if shown["args"] is not None:
        out["args"] = events_mod.short_repr(shown["args"])
        out["kwargs"] = events_mod.short_repr(shown["kwargs"])
    return out


class State:
    """Everything above plus the threads that keep it current."""

    def __init__(self, app: Any, max_tasks: int = 10000, sample_interval: float = 2.0, history: int = 900,
                 rescan_interval: float = 30.0, prune_after: float = 600.0):
        self.app = app
        self.rescan_interval = rescan_interval
        self.prune_after = prune_after
        self.index = TaskIndex(max_tasks)
        self.workers = WorkerBook(app, prune_after)
        self.throughput = Throughput(app.broker_client)
        self.queue_seen: Dict[str, float] = {}   # queue -> when it last held messages, took some, or was in use
        self._added: Dict[str, Any] = {}         # queue -> messages ever added (streams), at the last sample
        self.history = QueueHistory(history)
        self.sample_interval = sample_interval
        self.stopped = threading.Event()
        self.queue_names: List[str] = [app.conf.task_default_queue]
        self._queues_at = 0.0
        self._queues_lock = threading.Lock()
        self.reader = events_mod.Reader(app.broker_client)
        self.threads = [threading.Thread(target=self._follow, name="minique-dash-events", daemon=True),
                        threading.Thread(target=self._sample, name="minique-dash-queues", daemon=True)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stopped.set()

    def queues(self) -> List[str]:
        with self._queues_lock:  # one SCAN at a time; callers meanwhile wait for its answer
            if time.time() - self._queues_at > self.rescan_interval:
                self._rescan()
            return list(self.queue_names)

    def shown_queues(self, names: Iterable[str]) -> List[str]:
        """Of `names`, those to list: the default queue, and queues that held or took messages, were consumed
        by an online worker or named in a task event within `prune_after` seconds."""
        now = time.time()
        default = self.app.conf.task_default_queue
        return [q for q in names if q == default or now - self.queue_seen.get(q, now) < self.prune_after]

    def _seen(self, names: Iterable[Any], now: float) -> None:
        for q in names:
            if isinstance(q, str):
                self.queue_seen[q] = now

    def _rescan(self) -> None:
        try:
            found = set(self.app.broker.queues_known())
        except redis.exceptions.RedisError as exc:
            log.warning("cannot list queues: %s", exc)
            found = set(self.queue_names)
        with self.index.lock:
            found.update(r.get("queue") for r in self.index.tasks.values() if r.get("queue"))
        found.add(self.app.conf.task_default_queue)
        now = time.time()
        for q in found:
            self.queue_seen.setdefault(q, now)  # (found but never busy: listed until prune_after from now)
        self.queue_names = sorted(found)
        self._queues_at = time.time()

    @property
    def last_event_id(self) -> str:
        return self.reader.last_id

    def _follow(self) -> None:
        """Read events into the index until stopped; no error ends it (a batch that cannot be applied is
        skipped: the reader has moved past it)."""
        while not self.stopped.is_set():
            try:
                entries = self.reader.read_entries(count=500, block=1.0)
                batch = [ev for _, evs in entries for ev in evs]
                if batch:
                    self.index.apply(batch)
                    self.workers.apply(batch)
                    self._seen({ev.get("queue") for ev in batch if ev["type"].startswith("task-")}, time.time())
                    self._fill_rejected(batch)
                    self.throughput.add(entries)
            except redis.exceptions.RedisError as exc:
                log.warning("events stream unreadable (%s); retrying", exc)
                self.stopped.wait(1.0)
            except Exception:  # noqa: BLE001 - the follower outlives anything one batch does
                log.exception("error following the events stream (after entry %s); going on", self.last_event_id)
                self.stopped.wait(1.0)

    def _fill_rejected(self, batch: List[Dict[str, Any]]) -> None:
        """Rejected tasks whose name or arguments the events did not give (a message that never ran): from
        their dead letters, the newest 200 read once per batch of events."""
        wanted: Set[str] = set()
        for ev in batch:
            if ev["type"] == "task-rejected":
                rec = self.index.get(ev["uuid"])
                if rec is not None and (rec.get("name") is None or rec.get("args") is None):
                    wanted.add(ev["uuid"])
        if not wanted:
            return
        try:
            found = self.app.broker_client.xrevrange(keys.DLQ, count=200)
        except redis.exceptions.RedisError as exc:
            log.debug("cannot read the dead letters of rejected tasks: %s", exc)
            return
        for _, fields in found:
            tid = fields.get(b"task_id", b"").decode(errors="replace")
            if tid in wanted:
                wanted.discard(tid)
                self.index.fill(tid, _dead_letter_fields(fields.get(b"m"), self.app.conf.security_key))

    def _sample(self) -> None:
        from ..metrics import queue_sample
        while not self.stopped.is_set():
            try:
                sample = queue_sample(self.app, self.queues())
                self.history.add(sample)
                now = time.time()
                for q, info in sample["queues"].items():
                    added, self._added[q] = self._added.get(q), info.get("added")
                    if info["waiting"] or info["delayed"] or info["unacked"] or added != info.get("added"):
                        self.queue_seen[q] = now
                self._seen(self.workers.online_queues(), now)
            except redis.exceptions.RedisError as exc:
                log.warning("cannot sample queues: %s", exc)
            self.stopped.wait(self.sample_interval)
