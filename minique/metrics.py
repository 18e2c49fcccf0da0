"""Prometheus metrics: per-worker task counters and histograms, and cluster-wide queue gauges.

How pool children's numbers reach the worker's /metrics (the design, see docs/metrics.md)
-------------------------------------------------------------------------------------
Children count in shared memory; the parent adds the counts up when scraped.

The worker parent maps one anonymous shared region (`MetricsTable`) before it forks,
with one *region* per pool slot plus one for the parent itself (tasks it fails when
a child is lost). A region is a small append-only table of entries; an entry is a
label set (task name and queue, or queue and dead-letter reason) followed by float64
counters: one per task state and the buckets and sums of two histograms (run time
and queue wait). A child (or a pool thread) is the only writer of its region:

* a task event costs a dict look-up and two to four float additions in memory
  (`Recorder`): no system call, no Redis round trip, no lock;
* a new label set appends an entry (its key first, then the entry count), so the
  parent, reading without a lock, sees whole entries only;
* a region is never cleared: when a child exits (recycled, killed, crashed) the
  next child in that slot loads the entries and keeps adding to them, so counters
  stay monotonic and nothing a dead child counted is lost.

At scrape time the parent sums every region per label set (`snapshot()`); gauges
(tasks running now, prefetched messages, pool size) are read from the pool's slots
and, for prefetched messages, one pipelined Redis call.

Queue lengths, delayed messages and dead letters are cluster-wide facts: only the
dashboard process exports them (`ClusterCollector`), so N workers do not report N
copies.
"""
from __future__ import annotations

import bisect
import logging
import math
import mmap
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, cast

from . import keys, serializers
from .logs import Once

log = logging.getLogger("minique.metrics")
_report = Once(log)  # a collection error is logged once, not at every scrape

# Task states counted by minique_tasks_total, in value order.
STATES = ("received", "started", "succeeded", "failed", "retried", "revoked", "rejected")
EVENT_STATE = {f"task-{s}": i for i, s in enumerate(STATES)}
# Histogram buckets (seconds, upper bounds) shared by run time and queue wait.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
           math.inf)
NB = len(BUCKETS)
KIND_TASK, KIND_DEAD = 0, 1

# Counted too, each a family of its own: deliveries after the first, and tasks over a rate or concurrency limit.
REDELIVERED_AT = len(STATES)
THROTTLED_AT = REDELIVERED_AT + 1
# Layout of one entry's values (float64): counts per state, the two above, then run time buckets + sum, then
# wait buckets + sum.
RUNTIME_AT = THROTTLED_AT + 1
WAIT_AT = RUNTIME_AT + NB + 1
N_VALUES = WAIT_AT + NB + 1
KEY_BYTES = 160                      # 2-byte length + msgpack [kind, label, label]
ENTRY = KEY_BYTES + 8 * N_VALUES     # bytes per entry
CAPACITY = 256                       # entries per region; the last one collects overflowing label sets
HEADER = 8                           # float64: number of entries in use
REGION = HEADER + CAPACITY * ENTRY
OVERFLOW = "_other"
_LEN = struct.Struct("<H")


class MetricsTable:
    """Shared counters for `n` regions (pool slots + the parent), mapped before forking."""

    def __init__(self, n: int):
        self.n = n
        self.buf = mmap.mmap(-1, n * REGION)
        self.values = memoryview(self.buf).cast("d")
        # (region, entry) -> key, read once (entries never change)
        self._keys: Dict[Tuple[int, int], Tuple[Any, ...]] = {}

    def recorder(self, region: int) -> "Recorder":
        return Recorder(self, region)

    def _key_at(self, region: int, entry: int) -> Optional[Tuple[Any, ...]]:
        cached = self._keys.get((region, entry))
        if cached is None:
            at = region * REGION + HEADER + entry * ENTRY
            (length,) = _LEN.unpack_from(self.buf, at)
            try:
                cached = tuple(serializers.unpack(bytes(self.buf[at + 2:at + 2 + length])))
            except Exception:  # noqa: BLE001 - a torn key (cannot happen by construction): skip it this time
                return None
            self._keys[(region, entry)] = cached
        return cached

    def entries(self, region: int) -> Iterable[Tuple[Tuple[Any, ...], int]]:
        """(key, offset of its first value in `values`) of every entry in `region`."""
        count = int(self.values[region * REGION // 8])
        for entry in range(min(count, CAPACITY)):
            key = self._key_at(region, entry)
            if key is not None:
                yield key, (region * REGION + HEADER + entry * ENTRY + KEY_BYTES) // 8

    def snapshot(self) -> Dict[Tuple[Any, ...], List[float]]:
        """Values summed over every region, per label set."""
        out: Dict[Tuple[Any, ...], List[float]] = {}
        v = self.values
        for region in range(self.n):
            for key, at in self.entries(region):
                # typeshed types memoryview.tolist() as list[int] whatever the format; a "d" view gives floats
                values: List[float] = v[at:at + N_VALUES].tolist()  # type: ignore[assignment]
                have = out.get(key)
                if have is None:
                    out[key] = values
                else:
                    for i, x in enumerate(values):
                        have[i] += x
        return out

    def task_totals(self, state: str = "received") -> Dict[str, int]:
        """{task name: count in `state`} over every region (inspect().stats()["total"])."""
        i = STATES.index(state)
        out: Dict[str, int] = {}
        for (kind, name, _queue), values in self.snapshot().items():
            if kind == KIND_TASK and values[i]:
                out[name] = out.get(name, 0) + int(values[i])
        return out


class Recorder:
    """The writing side of one region (a pool child, a pool thread, or the parent)."""

    def __init__(self, table: MetricsTable, region: int):
        self.table = table
        self.v = table.values
        self.region = region
        self.base = region * REGION
        self.index: Dict[Tuple[Any, ...], int] = {key: at for key, at in table.entries(region)}
        self.run_started = 0.0       # monotonic start of the task running now (one at a time per recorder)
        # (task, queue, at) of the last count: a task's events come together
        self._last: Tuple[Any, ...] = (None, None, 0)

    def _at(self, kind: int, a: str, b: str) -> int:
        key = (kind, a, b)
        at = self.index.get(key)
        if at is None:
            at = self._add(key)
        return at

    def _add(self, key: Tuple[Any, ...]) -> int:
        count = int(self.v[self.base // 8])
        if count >= CAPACITY - 1:  # full: everything new is counted under one overflow entry
            key = (key[0], OVERFLOW, OVERFLOW)
            at = self.index.get(key)
            if at is not None:
                return at
            count = CAPACITY - 1
        raw = serializers.pack([key[0], key[1][:70], key[2][:70]])
        start = self.base + HEADER + count * ENTRY
        self.table.buf[start:start + 2 + len(raw)] = _LEN.pack(len(raw)) + raw
        self.v[self.base // 8] = float(count + 1)  # published after the key is in place
        at = (start + KEY_BYTES) // 8
        self.index[key] = at
        return at

    # --- recording ----------------------------------------------------------------------------------
    def count(self, state: int, task: str, queue: str) -> int:
        last_task, last_queue, at = self._last
        if task != last_task or queue != last_queue:
            at = self._at(KIND_TASK, task, queue)
            self._last = (task, queue, at)
        self.v[at + state] += 1.0
        return cast("int", at)

    def observe(self, at: int, offset: int, seconds: float) -> None:
        v = self.v
        v[at + offset + bisect.bisect_left(BUCKETS, seconds)] += 1.0
        v[at + offset + NB] += seconds

    def event(self, state: int, task: str, queue: str, msg: Any = None, runtime: Optional[float] = None) -> None:
        """Count a task event; started observes the queue wait, outcomes the run time."""
        at = self.count(state, task, queue)
        if state == 1:  # started
            self.run_started = time.monotonic()
            if msg is not None and msg.sent_at:
                since = msg.eta if msg.eta and msg.eta > msg.sent_at else msg.sent_at
                self.observe(at, WAIT_AT, max(0.0, time.time() - since))
        elif 2 <= state <= 4:  # succeeded, failed, retried: the run ended
            if runtime is None and self.run_started:
                runtime = time.monotonic() - self.run_started
            self.run_started = 0.0
            if runtime is not None:
                self.observe(at, RUNTIME_AT, runtime)

    def dead_letter(self, queue: str, reason: str) -> None:
        self.v[self._at(KIND_DEAD, queue or "", reason_class(reason))] += 1.0


def reason_class(reason: str) -> str:
    """A dead letter's reason as a short label value (the text itself is in the dead-letter stream)."""
    r = (reason or "").lower()
    for prefix, label in (("message of", "too_large"), ("undecodable", "undecodable"), ("unsigned", "unsigned"),
                          ("unknown task", "unknown_task"), ("rejected", "rejected"),
                          ("too many deliveries", "max_deliveries")):
        if r.startswith(prefix):
            return label
    return "bad_content"


# --- Prometheus collectors -----------------------------------------------------------------------------
def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(bound)


def _histogram(family: Any, labels: List[str], values: List[float], at: int) -> None:
    cumulative, out = 0.0, []
    for i, bound in enumerate(BUCKETS):
        cumulative += values[at + i]
        out.append((_bucket_label(bound), cumulative))
    family.add_metric(labels, out, sum_value=values[at + NB])


def task_families(snapshot: Dict[Tuple[Any, ...], List[float]]) -> List[Any]:
    """minique_tasks_total, the two histograms and minique_dead_letters_total from a table snapshot."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
    tasks = CounterMetricFamily("minique_tasks", "Task events by task name, state and queue.",
                                labels=["task", "state", "queue"])
    runtime = HistogramMetricFamily("minique_task_runtime_seconds",
                                    "Time tasks ran (succeeded, failed or retried), by task and queue.",
                                    labels=["task", "queue"])
    wait = HistogramMetricFamily("minique_task_queue_wait_seconds",
                                 "Time from sending (or ETA) to start, by task and queue.", labels=["task", "queue"])
    dead = CounterMetricFamily("minique_dead_letters", "Messages this worker moved to the dead letters.",
                               labels=["queue", "reason"])
    redelivered = CounterMetricFamily("minique_task_redeliveries", "Deliveries after a message's first (a lost "
                                      "worker's, a requeue), by task and queue.", labels=["task", "queue"])
    throttled = CounterMetricFamily("minique_tasks_throttled", "Tasks parked for a rate limit's reserved start "
                                    "or a concurrency slot, by task and queue.", labels=["task", "queue"])
    for key in sorted(snapshot):
        values = snapshot[key]
        kind, a, b = key
        if kind == KIND_TASK:
            for i, state in enumerate(STATES):
                tasks.add_metric([a, state, b], values[i])
            redelivered.add_metric([a, b], values[REDELIVERED_AT])
            throttled.add_metric([a, b], values[THROTTLED_AT])
            if sum(values[RUNTIME_AT:RUNTIME_AT + NB]):
                _histogram(runtime, [a, b], values, RUNTIME_AT)
            if sum(values[WAIT_AT:WAIT_AT + NB]):
                _histogram(wait, [a, b], values, WAIT_AT)
        elif kind == KIND_DEAD:
            dead.add_metric([a, b], values[0])
    return [tasks, runtime, wait, dead, redelivered, throttled]


class WorkerCollector:
    """What one worker exports: its tasks (from the shared table) and its pool's state."""

    def __init__(self, worker: Any, table: MetricsTable):
        self.worker = worker
        self.table = table

    def describe(self) -> List[Any]:
        return []  # collected on demand only (the label sets are not known up front)

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        w = self.worker
        yield from task_families(self.table.snapshot())
        pool = w.pool
        running, running_held = 0, 0
        members = list(pool.members.values()) if pool is not None else []
        for m in members:
            for _, _, record in pool.slots[m.index].tasks():
                running += 1
                if record.acks_late:  # its message is still held while it runs
                    running_held += 1
        info = GaugeMetricFamily("minique_worker_info", "Constant 1, labelled with the worker's identity.",
                                 labels=["worker", "pool", "queues"])
        info.add_metric([w.hostname, w.pool_kind, ",".join(w.queues)], 1)
        yield info
        yield GaugeMetricFamily("minique_worker_up", "1 while the worker serves.", value=1)
        yield GaugeMetricFamily("minique_worker_start_time_seconds", "When the worker started (epoch).",
                                value=w.started_at)
        yield GaugeMetricFamily("minique_worker_pool_size", "Pool processes (or threads) wanted.",
                                value=pool.size if pool is not None else 0)
        yield GaugeMetricFamily("minique_worker_pool_processes", "Pool processes (or threads) alive.",
                                value=len(members))
        yield GaugeMetricFamily("minique_tasks_running", "Tasks running now.", value=running)
        held = held_messages(w) if pool is not None else None
        if held is not None:
            yield GaugeMetricFamily("minique_tasks_prefetched",
                                    "Messages the pool holds (delivered, unacknowledged) that are not running.",
                                    value=max(0, held - running_held))
        yield CounterMetricFamily("minique_worker_child_restarts", "Pool processes that ended abnormally.",
                                  value=w.child_restarts)


def held_messages(worker: Any) -> Optional[int]:
    """Messages the worker's pool members hold (delivered, not acked): one pipelined Redis call."""
    try:
        names = {m.name for m in list(worker.pool.members.values())}
        client = worker.app.broker_client
        pipe = client.pipeline(transaction=False)
        if worker.app.broker.kind == "streams":
            for q in worker.queues:
                for p in keys.PRIORITIES:
                    pipe.xpending(keys.queue(q, p), keys.GROUP)
            total = 0
            for info in pipe.execute(raise_on_error=False):
                if isinstance(info, dict):
                    for c in info.get("consumers") or ():
                        name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                        if name in names:
                            total += int(c["pending"])
            return total
        for q in worker.queues:
            for name in names:
                pipe.llen(keys.processing(q, name))
        return sum(int(x) for x in pipe.execute(raise_on_error=False) if isinstance(x, int))
    except Exception as exc:  # noqa: BLE001 - a scrape must answer even when Redis does not
        log.debug("cannot count held messages: %s", exc)
        return None


class ClusterCollector:
    """What the dashboard exports: queue lengths, delayed and unacknowledged messages, dead letters, workers."""

    def __init__(self, app: Any, queues: Any):
        self.app = app
        self.queues = queues  # callable returning the queue names to report

    def describe(self) -> List[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        sample = queue_sample(self.app, self.queues())
        length = GaugeMetricFamily("minique_queue_length", "Messages waiting in a queue, by priority.",
                                   labels=["queue", "priority"])
        delayed = GaugeMetricFamily("minique_queue_delayed", "Messages waiting for their ETA, by queue.",
                                    labels=["queue"])
        unacked = GaugeMetricFamily("minique_queue_unacked", "Messages delivered to workers and not acknowledged.",
                                    labels=["queue"])
        age = GaugeMetricFamily("minique_queue_oldest_message_age_seconds",
                                "Seconds the oldest waiting message has waited in its queue (streams).",
                                labels=["queue"])
        paused = GaugeMetricFamily("minique_queue_paused", "1 while the queue is paused (control pause).",
                                   labels=["queue"])
        sent = CounterMetricFamily("minique_tasks_sent", "Messages added to a queue: sent, retried, or due "
                                   "from the delayed set (streams, Redis 7+).", labels=["queue"])
        now = sample["time"]
        for q, info in sorted(sample["queues"].items()):
            for p, n in sorted(info["priorities"].items()):
                if n or p == 0:  # priority 0 always (sums over a queue work); the others while in use
                    length.add_metric([q, str(p)], n)
            delayed.add_metric([q], info["delayed"])
            unacked.add_metric([q], info["unacked"])
            paused.add_metric([q], 1.0 if q in sample["paused"] else 0.0)
            if info["waiting"] and info["oldest"] is not None:
                age.add_metric([q], max(0.0, now - info["oldest"]))
            elif info["waiting"] == 0:
                age.add_metric([q], 0.0)
            if info["added"] is not None:
                sent.add_metric([q], info["added"])
        yield length
        yield delayed
        yield unacked
        yield age
        yield paused
        yield sent
        yield GaugeMetricFamily("minique_dead_letter_queue_length", "Messages in the dead-letter stream.",
                                value=sample["dead_letters"])
        up = GaugeMetricFamily("minique_worker_heartbeat_age_seconds", "Seconds since each worker's heartbeat.",
                               labels=["worker"])
        alive = 0
        interval = float(self.app.conf.worker_heartbeat_interval)
        now = time.time()
        pipe = self.app.broker_client.pipeline(transaction=False)
        for key in (keys.WORKERS, keys.BEAT_LAST, keys.BEAT_LAG, keys.DEDUPLICATED):
            pipe.hgetall(key)
        workers, last_runs, lags, deduplicated = pipe.execute()
        dedup = CounterMetricFamily("minique_tasks_deduplicated", "Sends of a unique task that gave the result "
                                    "of the one waiting or running (no new task).", labels=["task"])
        for name, n in sorted(deduplicated.items()):
            dedup.add_metric([name.decode(errors="replace")], float(n))
        yield dedup
        yield _per_entry("minique_beat_last_run_timestamp_seconds", "When each beat entry last ran (its slot, epoch).",
                         last_runs)
        yield _per_entry("minique_beat_lag_seconds", "How late each beat entry's last run was sent after its slot.",
                         lags)
        for host, raw in workers.items():
            try:
                ts = serializers.unpack(raw)["ts"]
            except Exception:  # noqa: BLE001
                continue
            up.add_metric([host.decode()], max(0.0, now - ts))
            alive += now - ts < max(3 * interval, 6.0)
        yield up
        yield GaugeMetricFamily("minique_workers_alive", "Workers whose heartbeat is recent (cluster-wide).",
                                value=alive)


def _per_entry(name: str, doc: str, stored: Dict[bytes, bytes]) -> Any:
    """A gauge labelled by beat entry from one of beat's hashes (values it cannot read are left out)."""
    from prometheus_client.core import GaugeMetricFamily
    family = GaugeMetricFamily(name, doc, labels=["entry"])
    for entry, raw in sorted(stored.items()):
        try:
            family.add_metric([entry.decode(errors="replace")], float(raw))
        except ValueError:
            continue
    return family


def queue_sample(app: Any, queues: Iterable[str]) -> Dict[str, Any]:
    """Waiting messages per queue and priority, delayed, unacknowledged, and dead letters: one round trip."""
    client = app.broker_client
    streams = app.broker.kind == "streams"
    queues = list(queues)
    pipe = client.pipeline(transaction=False)
    for q in queues:
        for p in keys.PRIORITIES:
            if streams:
                pipe.xinfo_stream(keys.queue(q, p))  # length, and entries-added (Redis 7): a sent counter
                pipe.xpending(keys.queue(q, p), keys.GROUP)
            else:
                pipe.llen(keys.queue(q, p))
        pipe.zcard(keys.delayed(q))
        if not streams:
            pipe.zrange(keys.consumers(q), 0, -1)
    pipe.xlen(keys.DLQ)
    pipe.smembers(keys.PAUSED)
    results = iter(pipe.execute(raise_on_error=False))
    out: Dict[str, Any] = {"time": time.time(), "queues": {}}
    held_lists: List[Tuple[str, List[str]]] = []
    for q in queues:
        prios: Dict[int, int] = {}
        unacked = 0
        added: Optional[int] = None
        for p in keys.PRIORITIES:
            if streams:
                stream, pending = next(results), next(results)  # (XINFO fails on a stream never used: 0)
                total = int(stream.get("length", 0)) if isinstance(stream, dict) else 0
                if isinstance(stream, dict) and "entries-added" in stream:
                    added = (added or 0) + int(stream["entries-added"])
                pending = int(pending.get("pending", 0)) if isinstance(pending, dict) else 0
                prios[p] = max(0, total - pending)
                unacked += pending
            else:
                n = next(results)
                prios[p] = n if isinstance(n, int) else 0
        delayed = next(results)
        info = {"priorities": prios, "waiting": sum(prios.values()),
                "delayed": delayed if isinstance(delayed, int) else 0, "unacked": unacked, "added": added}
        if not streams:
            consumers = next(results)
            held_lists.append((q, [c.decode() for c in consumers] if isinstance(consumers, list) else []))
        out["queues"][q] = info
    dead, paused = next(results), next(results)
    out["dead_letters"] = dead if isinstance(dead, int) else 0
    out["paused"] = {q.decode(errors="replace") for q in paused} if isinstance(paused, set) else set()
    waiting = [q for q in queues if out["queues"][q]["waiting"]]
    oldest = app.broker.oldest_waiting(waiting) if waiting else {}
    for q in queues:
        out["queues"][q]["oldest"] = oldest.get(q)
    if held_lists:
        pipe = client.pipeline(transaction=False)
        for q, consumers in held_lists:
            for c in consumers:
                pipe.llen(keys.processing(q, c))
        counts = iter(pipe.execute(raise_on_error=False))
        for q, consumers in held_lists:
            out["queues"][q]["unacked"] = sum(int(next(counts) or 0) for _ in consumers)
    return out


# --- serving ----------------------------------------------------------------------------------------------
def metrics_payload(registry: Any, accept: str = "") -> Tuple[bytes, str]:
    """The exposition body and content type for a request's Accept header."""
    from prometheus_client.exposition import choose_encoder
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


class _MetricsHandler(BaseHTTPRequestHandler):
    registry: Any = None  # None: a health-only server
    health: Any = None    # callable(probe) -> (ok, text) answering /livez and /readyz, or None
    server_version = "minique-metrics"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path in ("/livez", "/readyz") and self.health is not None:
            ok, text = self.health(path[1:])
            self._answer(200 if ok else 503, (text + "\n").encode(), "text/plain; charset=utf-8")
            return
        if path not in ("/metrics", "/") or self.registry is None:
            self.send_error(404)
            return
        if path == "/":
            body, ctype = b"minique worker: see /metrics\n", "text/plain; charset=utf-8"
        else:
            try:
                body, ctype = metrics_payload(self.registry, self.headers.get("Accept", ""))
            except Exception as exc:  # noqa: BLE001 - this request fails; the server goes on
                _report("collect", "metrics collection failed: %r", exc, exc_info=True)
                self.send_error(500, str(exc))
                return
        self._answer(200, body, ctype)

    def _answer(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("metrics %s %s", self.address_string(), format % args)


class MetricsServer:
    """A /metrics (and /livez, /readyz) HTTP server in a daemon thread (stdlib ThreadingHTTPServer)."""

    def __init__(self, registry: Any, host: str, port: int,
                 health: Optional[Callable[[str], Tuple[bool, str]]] = None):
        handler = type("Handler", (_MetricsHandler,), {"registry": registry, "health": staticmethod(health)
                                                       if health is not None else None})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="minique-metrics", daemon=True)

    def start(self) -> "MetricsServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def worker_registry(worker: Any, table: MetricsTable) -> Any:
    from prometheus_client import CollectorRegistry, ProcessCollector
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(worker, table))
    ProcessCollector(registry=registry)
    return registry
