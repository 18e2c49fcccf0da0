"""What the dashboard knows: a bounded task index fed by the events stream, workers, queue history.

Three daemon threads keep it current:

* the follower reads `minique:events` (XREAD BLOCK, from the start of the capped stream)
  into `TaskIndex` (the last `max_tasks` tasks, oldest evicted first) and `WorkerBook`;
  events are untrusted data (any Redis client can add one): `events.Reader` drops malformed
  ones, and an error applying one event skips that event, never the follower;
* the sampler measures every queue (one pipelined round trip, see metrics.queue_sample)
  each `sample_interval` seconds into `QueueHistory` (a ring buffer: the chart);
* queue names are rediscovered with SCAN every `rescan_interval` (30 s; never KEYS), and
  queues named in task events are added as they appear.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from typing import Any, Deque, Dict, Iterable, List, Optional, Set

import redis

from .. import events as events_mod, keys, serializers, states

log = logging.getLogger("minique.dashboard")

STATE_OF = {"task-received": states.RECEIVED, "task-started": states.STARTED, "task-retried": states.RETRY,
            "task-succeeded": states.SUCCESS, "task-failed": states.FAILURE, "task-revoked": states.REVOKED,
            "task-rejected": states.REJECTED}
# Within one delivery (same `retries`), later phases win; a later delivery (more retries) wins over earlier ones.
RANK = {"task-received": 1, "task-started": 2, "task-retried": 3, "task-succeeded": 4, "task-failed": 4,
        "task-revoked": 4, "task-rejected": 4}
TIME_FIELD = {"task-received": "received", "task-started": "started", "task-retried": "retried",
              "task-succeeded": "succeeded", "task-failed": "failed", "task-revoked": "revoked",
              "task-rejected": "rejected"}
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
                                    "parent_id", "group_id", "resent_at", "resent")} | {
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


class WorkerBook:
    """Workers from the heartbeat hash, completed with their worker events (load, offline)."""

    def __init__(self, app: Any):
        self.app = app
        self.lock = threading.Lock()
        self.seen: Dict[str, Dict[str, Any]] = {}

    def apply(self, batch: Iterable[Dict[str, Any]]) -> None:
        with self.lock:
            for ev in batch:
                kind = ev.get("type", "")
                host = ev.get("hostname")
                if not host or not kind.startswith("worker-"):
                    continue
                rec = self.seen.setdefault(host, {"hostname": host})
                rec["last_event"] = kind
                rec["event_ts"] = ev.get("ts")
                for field in ("loadavg", "freq", "queues", "concurrency", "pool", "processed", "active"):
                    if ev.get(field) is not None:
                        rec[field] = ev[field]
                if len(self.seen) > 1000:
                    oldest = min(self.seen, key=lambda h: self.seen[h].get("event_ts") or 0)
                    self.seen.pop(oldest, None)

    def list(self) -> List[Dict[str, Any]]:
        now = time.time()
        interval = float(self.app.conf.worker_heartbeat_interval)
        raw = self.app.broker_client.hgetall(keys.WORKERS)
        out: Dict[str, Dict[str, Any]] = {}
        with self.lock:
            seen = {h: dict(r) for h, r in self.seen.items()}
        for host_b, packed in raw.items():
            host = host_b.decode(errors="replace")
            try:  # a heartbeat any Redis client may have written: a map with a numeric ts, or skipped
                info = serializers.unpack(packed)
                age = now - float(info.get("ts") or 0)
            except Exception:  # noqa: BLE001
                continue
            ev = seen.get(host, {})
            freq = float(ev.get("freq") or interval)
            rec = {"hostname": host, "status": "online" if age < max(3 * freq, 6.0) else "lost",
                   "last_heartbeat": info.get("ts"), "heartbeat_age": age, "pid": info.get("pid"),
                   "pool": info.get("pool"), "concurrency": info.get("concurrency"),
                   "active": info.get("active"), "processed": info.get("processed"),
                   "queues": info.get("queues"), "started": info.get("started"), "loadavg": ev.get("loadavg")}
            out[host] = rec
        for host, ev in seen.items():
            if host in out:
                continue
            out[host] = {"hostname": host, "status": "offline" if ev.get("last_event") == "worker-offline" else "lost",
                         "last_heartbeat": ev.get("event_ts"),
                         "heartbeat_age": now - float(ev.get("event_ts") or now), "pool": ev.get("pool"),
                         "concurrency": ev.get("concurrency"), "active": ev.get("active"),
                         "processed": ev.get("processed"), "queues": ev.get("queues"), "loadavg": ev.get("loadavg")}
        return sorted(out.values(), key=lambda r: (r["status"] != "online", r["hostname"]))


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


class State:
    """Everything above plus the threads that keep it current."""

    def __init__(self, app: Any, max_tasks: int = 10000, sample_interval: float = 2.0, history: int = 900,
                 rescan_interval: float = 30.0):
        self.app = app
        self.rescan_interval = rescan_interval
        self.index = TaskIndex(max_tasks)
        self.workers = WorkerBook(app)
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

    def _rescan(self) -> None:
        try:
            found = set(self.app.broker.queues_known())
        except redis.exceptions.RedisError as exc:
            log.warning("cannot list queues: %s", exc)
            found = set(self.queue_names)
        with self.index.lock:
            found.update(r.get("queue") for r in self.index.tasks.values() if r.get("queue"))
        found.add(self.app.conf.task_default_queue)
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
                batch = self.reader.read(count=500, block=1.0)
                if batch:
                    self.index.apply(batch)
                    self.workers.apply(batch)
            except redis.exceptions.RedisError as exc:
                log.warning("events stream unreadable (%s); retrying", exc)
                self.stopped.wait(1.0)
            except Exception:  # noqa: BLE001 - the follower outlives anything one batch does
                log.exception("error following the events stream (after entry %s); going on", self.last_event_id)
                self.stopped.wait(1.0)

    def _sample(self) -> None:
        from ..metrics import queue_sample
        while not self.stopped.is_set():
            try:
                self.history.add(queue_sample(self.app, self.queues()))
            except redis.exceptions.RedisError as exc:
                log.warning("cannot sample queues: %s", exc)
            self.stopped.wait(self.sample_interval)
