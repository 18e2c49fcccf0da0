"""Task and worker events, batched into one capped Redis stream (what the dashboard reads).

Events are on by default (`worker_send_task_events = True`, Celery's name; `-E` turns
them on, `--without-events` off). A pool process appends events to a local buffer and
writes them as one stream entry per batch, inside the pipeline it flushes anyway, so
events cost no extra round trip on the task path. A batch is written when it reaches
100 records (~100 tasks) or 0.5 s, or when the process finds no more messages to run (so the
last events never wait for the next message); and so that a task is seen running while it
runs, its task-started leaves with the write before its body when the previous task took
0.1 s or more or the process was idle before it (waiting for messages), else (a busy process
whose tasks were short until then) 0.5 s into its body, when it is still running (the
Outbox's alarm: worker/outbox.py). A batch is packed compactly (see `Events`) and `read()`
unpacks it into the dicts described here.

Task events (Celery's names): task-received, task-started, task-succeeded,
task-failed, task-retried, task-revoked, task-rejected. Each carries uuid, name,
queue, retries, root_id, parent_id, group_id, hostname, pid and ts (epoch seconds);
task-received adds sent_at/eta/expires/priority, task-started args/kwargs (bounded
reprs), task-succeeded runtime, task-failed exception and, so the failure can be
re-sent from the dashboard, the failed message itself (its wire encoding, signature
included, when at most MAX_MESSAGE bytes). Worker events: worker-online,
worker-heartbeat (every worker_heartbeat_interval), worker-offline.

Anyone who can write to Redis can add events, so a reader takes them as untrusted data:
`read()` returns only events whose fields have the types documented here (`FIELD_TYPES`);
an entry that is not a batch, a batch of another version, a record or an event of the
wrong shape is skipped and logged (once per kind of problem), and reading goes on.

The same `Events` object is the executor's hook for one more thing that must be cheap
per task, the shared-memory metrics counters (metrics.Recorder), so it exists even when
events are off.
"""
from __future__ import annotations

import logging
import os
import reprlib
import time
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Set, Tuple

from . import caps, keys, serializers
from .display import DISPLAYABLE
from .message import decode

log = logging.getLogger("minique.events")

MAXLEN = 5000           # stream entries kept (each a batch of up to BATCH_RECORDS records: ~13 KB full, ~65 MB in all)
BATCH_RECORDS = 100     # a record: one event, or the three of a task that succeeded (~130 bytes with its header)
BATCH_SECONDS = 0.5
SLOW = 0.1              # seconds: after a task this long, the next one's events leave before it runs
MAX_MESSAGE = 16 * 1024  # bytes of wire message carried by task-failed (larger: not re-sendable from the dashboard)
SMALL_BODY = 256        # bytes: a task-started carries a body up to this size instead of reprs of its arguments
SMALL_MESSAGE = 512     # bytes: a task's header is its wire message, up to this size, rather than fields taken out
_READABLE = DISPLAYABLE  # bodies a reader may decode (never pickle: readers trust no worker)
VERSION = 4             # the batch format (docs/protocol.md)

_repr = reprlib.Repr()
_repr.maxstring = 120
_repr.maxother = 120
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 16
_repr.maxlevel = 4


_SCALARS = frozenset({int, float, bool, type(None)})


def _small(value: Any) -> bool:
    """A scalar, or a short string: its plain repr is short and cheap."""
    t = type(value)
    return t in _SCALARS or (t is str and len(value) <= 100)


def short_repr(value: Any, limit: Optional[int] = caps.ARGSREPR_MAX) -> str:
    """A bounded repr (task_argsrepr_max_size characters, the cut marked): its cost does not grow with
    the size of the value."""
    t = type(value)
    if t is list or t is tuple:  # the common case, args: plain repr when small (5x cheaper than reprlib)
        if len(value) <= 8 and all(map(_small, value)):
            return caps.cut(repr(value), limit)
    elif t is dict and len(value) <= 8 and all(map(_small, value.values())) and all(map(_small, value)):
        return caps.cut(repr(value), limit)
    try:
        return caps.cut(_repr.repr(value), limit)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not fail the task
        return f"<unrepresentable {type(value).__name__}>"


TYPES = ("task-received", "task-started", "task-succeeded", "task-failed", "task-retried", "task-revoked",
         "task-rejected")
_CODE = {t: i for i, t in enumerate(TYPES)}
_OTHER = -1                         # a record that carries its whole event (worker events, raw task events)
_RECEIVED_STARTED = len(TYPES)      # task-received and task-started of one task at one moment
_SUCCEEDED_RUN = _RECEIVED_STARTED + 1  # those two and the task-succeeded of a task that ran in one batch
_RECEIVED = ("sent_at", "eta", "expires", "priority")
_HEADER = ("uuid", "name", "queue", "retries", "root_id", "parent_id", "group_id")
_NO_FIELDS = (None, None, None, 0, b"", "")  # received/started fields of a header that cannot be read


class Events:
    """Buffer of events from one process (one pool process or thread, or the worker parent).

    The buffer is compact, because it is on the per-task path: a task's fixed fields are written
    once per batch as its header, and each event is a short record (type code, time, header index,
    its own fields). In the usual case nothing is taken out of the message at all: a small JSON or
    msgpack message is its own header (its wire bytes, which hold every field of task-received and
    task-started), and a task that succeeds before the next flush makes one record for its three
    events. `read()` turns a batch back into Celery-style event dicts, so readers never see the
    packing."""

    def __init__(self, hostname: str, send: bool = True, recorder: Any = None,
                 repr_max: Optional[int] = caps.ARGSREPR_MAX):
        self.hostname = hostname
        self.repr_max = repr_max    # task_argsrepr_max_size
        self.send = send
        self.recorder = recorder
        self.pid = os.getpid()
        self.records: List[Tuple[Any, ...]] = []
        self.headers: List[Any] = []
        self.due = 0.0              # when the batch is old enough to go (monotonic)
        self.slow = False           # the last task took SLOW seconds or more
        self.idle = False           # the process waited for messages (flushed) since its last task
        self._pending: Any = None   # a message whose task-received waits to go out with its task-started
        self._data: Optional[bytes] = None  # its wire bytes
        self._last: Any = None      # the message of the last header, and that header's index
        self._last_at = -1
        self._running: Any = None   # a task started but not recorded yet: it is, with its outcome
        self._running_at = 0.0      # its start (epoch seconds)
        self._running_data = b""    # its wire bytes

    # --- task events --------------------------------------------------------------------------------
    def received(self, msg: Any, data: Optional[bytes] = None) -> None:
        """task-received, just before the task runs. The event is recorded together with task-started
        (one record) unless something comes between that calls `received_now` (a rate-limit wait).
        `data`: the message's wire bytes, which a small message's events carry as its header."""
        if self.recorder is not None:
            self.recorder.event(0, msg.task, msg.queue, msg, None)
        self._pending = msg if self.send else None
        self._data = data

    def received_now(self) -> None:
        """Record the pending task-received on its own now (its task waits before it starts)."""
        msg, self._pending = self._pending, None
        if msg is not None:
            self._task(0, msg, (msg.sent_at, msg.eta, msg.expires, msg.priority))

    def started(self, msg: Any, args: Any, kwargs: Any) -> None:
        if self.recorder is not None:
            self.recorder.event(1, msg.task, msg.queue, msg, None)
        if self.send:
            data = self._data
            if self._pending is msg and data is not None and len(data) <= SMALL_MESSAGE and \
                    msg.content_type in _READABLE:
                # the usual case: the wire message is the header and holds every field of both events,
                # so nothing is taken out of it here (the reader decodes it, off the task path); the
                # record waits for the outcome, so a task that succeeds makes one record in all
                self._pending = None
                if not self.records:
                    self.due = time.monotonic() + BATCH_SECONDS
                self._running = msg
                self._running_at = time.time()
                self._running_data = data
                return
            # args and kwargs as the reader will show them: a small JSON or msgpack body is carried as
            # it is (its bounded reprs are made by whoever reads the event, off the task path)
            body = msg.body
            shown = ((body, msg.content_type) if len(body) <= SMALL_BODY and msg.content_type in _READABLE
                     else (short_repr(args, self.repr_max), short_repr(kwargs, self.repr_max)))
            if self._pending is msg:  # received and started at once: one record for both
                self._pending = None
                self._task(_RECEIVED_STARTED, msg, (msg.sent_at, msg.eta, msg.expires, msg.priority) + shown)
            else:
                self.received_now()
                self._task(1, msg, shown)

    def succeeded(self, msg: Any, runtime: float) -> None:
        self.slow = runtime >= SLOW
        if self.recorder is not None:
            self.recorder.event(2, msg.task, msg.queue, msg, runtime)
        if not self.send:
            return
        if self._running is msg:
            self._running = None
            self.headers.append(self._running_data)
            self.records.append((_SUCCEEDED_RUN, self._running_at, len(self.headers) - 1, runtime))
        else:
            self._task(2, msg, runtime)

    def task(self, type: str, msg: Any, **fields: Any) -> None:
        """Any other task event (failed, retried, revoked, rejected), with its own fields."""
        code = _CODE[type]
        rec = self.recorder
        if rec is not None:
            rec.event(code, msg.task, msg.queue, msg, fields.get("runtime"))
            if type == "task-rejected" and fields.get("dead"):
                rec.dead_letter(msg.queue, fields.get("reason") or "rejected")
        if not self.send:
            return
        if type == "task-failed":  # the message whole, so the dashboard re-sends the signed bytes it shows
            data = msg.encode()  # (what a signature covers is this encoding: it verifies as the sender's bytes)
            if len(data) <= MAX_MESSAGE:
                fields["message"] = data
        self._task(code, msg, fields)

    def _record_running(self) -> None:
        """The started task's task-received and task-started, as a record of their own (another event
        or a flush comes before its outcome)."""
        msg, self._running = self._running, None
        self._task(_RECEIVED_STARTED, msg, None, self._running_data, self._running_at)

    def _task(self, code: int, msg: Any, extra: Any, data: Optional[bytes] = None, ts: float = 0.0) -> None:
        if self._running is not None:
            self._record_running()
        if msg is self._last:  # a task's events follow one another: its header is the last one
            at = self._last_at
        else:
            at = self._last_at = len(self.headers)
            self._last = msg
            if data is not None:
                self.headers.append(data)
            else:
                root = 0 if msg.root_id == msg.id else msg.root_id  # (a task that is its own root: 1 byte, not 37)
                self.headers.append((msg.id, msg.task, msg.queue, msg.retries, root, msg.parent_id, msg.group_id))
        if not self.records:
            self.due = time.monotonic() + BATCH_SECONDS
        self.records.append((code, ts or time.time(), at, extra))

    # --- other events -------------------------------------------------------------------------------
    def raw(self, type: str, **fields: Any) -> None:
        rec = self.recorder
        if rec is not None and type == "task-rejected" and fields.get("dead", True):
            rec.dead_letter(fields.get("queue") or "", fields.get("reason") or "")
        if self.send:
            self._other(type, fields)

    def worker(self, type: str, **fields: Any) -> None:
        if self.send:
            self._other(type, fields)

    def _other(self, type: str, fields: Dict[str, Any]) -> None:
        if self._running is not None:
            self._record_running()
        if not self.records:
            self.due = time.monotonic() + BATCH_SECONDS
        fields["type"] = type
        self.records.append((_OTHER, time.time(), -1, fields))

    # --- flushing -----------------------------------------------------------------------------------
    def maybe_flush(self, pipe: Any) -> None:
        """Called after each task with the pipeline the consumer writes next: add the batch to it when
        it is big or old enough. (The consumer also flushes it when it finds no more messages: the
        events must not wait while it does.)"""
        if self.records and (len(self.records) >= BATCH_RECORDS or time.monotonic() >= self.due):
            self.flush(pipe)

    def before_run(self, pipe: Any) -> None:
        """Called with the pre-run write: where tasks are long, or the process was idle (so a task sent to
        an idle worker is seen at once), the batch goes out before the task runs, so it is seen as started
        while it runs (short tasks' events wait for the batch; see also `unsent`)."""
        if self.slow or self.idle:
            self.idle = False
            if self.records or self._running is not None:
                self.flush(pipe)
        elif self.records and time.monotonic() >= self.due:  # (a task started on an empty batch is not due)
            self.flush(pipe)

    def unsent(self) -> bool:
        """Events wait in the buffer (the Outbox's alarm then flushes them if the body runs long).

        That flush runs in a SIGALRM handler while a task body runs: code that adds events from inside a
        body must not let it land between a header and its record (today nothing in a body adds any)."""
        return bool(self.records) or self._running is not None

    def flush(self, pipe: Any) -> None:
        if self._running is not None:
            self._record_running()
        if self.records:
            batch = {"v": VERSION, "host": self.hostname, "pid": self.pid, "h": self.headers, "e": self.records}
            pipe.xadd(keys.EVENTS, {"b": serializers.pack(batch)}, maxlen=MAXLEN, approximate=True)
            self.records, self.headers, self._last = [], [], None


def expand(batch: Any, malformed: Optional[Callable[[str], None]] = None) -> Iterator[Dict[str, Any]]:
    """The event dicts of one stream entry's batch. What is not a batch of this version, a record
    that cannot be read and an event whose fields have the wrong types are skipped, each reported
    to `malformed` (with why) when given: the other events of the batch still come."""
    report = malformed or _ignore
    if not isinstance(batch, dict):
        report(f"the entry is not a batch (a {type(batch).__name__})")
        return
    if batch.get("v") != VERSION:
        report(f"batch version {short_repr(batch.get('v'))}, not {VERSION}")
        return
    raw_headers, records = batch.get("h"), batch.get("e")
    if not isinstance(raw_headers, list) or not isinstance(records, list):
        report("the batch has no list of headers and list of records")
        return
    headers, wire = _headers(raw_headers)
    for record in records:
        try:
            found = list(_record(record, batch.get("host"), batch.get("pid"), headers, wire))
        except Exception as exc:  # noqa: BLE001 - any shape of record: skipped, the others still read
            report(f"unreadable record ({type(exc).__name__})")
            continue
        for ev in found:
            problem = problem_of(ev)
            if problem is None:
                yield ev
            else:
                report(problem)


def _ignore(problem: str) -> None:
    """The default report of a malformed record: none."""


def _record(record: Any, host: Any, pid: Any, headers: List[Any], wire: Dict[int, Tuple[Any, ...]]
            ) -> Iterator[Dict[str, Any]]:
    """The events of one record (an exception for a record of the wrong shape)."""
    code, ts, at, extra = record

    def event(kind: str, at: int, ts: float) -> Dict[str, Any]:
        if type(at) is not int or not 0 <= at < len(headers):
            raise IndexError("header index out of range")
        ev = dict(zip(_HEADER, headers[at]), type=kind, hostname=host, pid=pid, ts=ts)
        if ev.get("root_id") == 0:
            ev["root_id"] = ev.get("uuid")
        return ev

    if code == _OTHER:
        yield {"hostname": host, "pid": pid, **extra, "ts": ts}
    elif code == _RECEIVED_STARTED or code == _SUCCEEDED_RUN:
        fields = extra if code == _RECEIVED_STARTED and extra is not None else (
            wire.get(at, _NO_FIELDS))   # a wire-message header holds them
        received = dict(event("task-received", at, ts), **dict(zip(_RECEIVED, fields)))
        args, kwargs = _shown(fields[4], fields[5])
        yield received
        yield dict(event("task-started", at, ts), args=args, kwargs=kwargs)
        if code == _SUCCEEDED_RUN:  # its time: the start plus the runtime
            yield dict(event("task-succeeded", at, ts + extra), runtime=extra)
    else:
        ev = event(TYPES[code], at, ts)
        if isinstance(extra, dict):
            ev.update(extra)
        elif code == 0:
            ev.update(zip(_RECEIVED, extra))
        elif code == 1:
            ev["args"], ev["kwargs"] = _shown(*extra)
        elif code == 2:
            ev["runtime"] = extra
        yield ev


def _headers(raw: List[Any]) -> Tuple[List[Any], Dict[int, Tuple[Any, ...]]]:
    """Headers as field lists, and for each wire-message header its task-received and task-started
    fields ([sent_at, eta, expires, priority, body, content_type])."""
    headers: List[Any] = []
    wire: Dict[int, Tuple[Any, ...]] = {}
    for at, h in enumerate(raw):
        if isinstance(h, bytes):
            try:
                m = decode(h)
            except Exception:  # noqa: BLE001 - a reader shows what it can
                headers.append(("?", "<undecodable message>", None, 0, None, None, None))
                wire[at] = _NO_FIELDS
                continue
            headers.append((m.id, m.task, m.queue, m.retries, m.root_id, m.parent_id, m.group_id))
            wire[at] = (m.sent_at, m.eta, m.expires, m.priority, m.body, m.content_type)
        else:
            headers.append(h if isinstance(h, (list, tuple)) else ())  # (() gives an event without uuid: skipped)
    return headers, wire


def _shown(first: Any, second: Any) -> Tuple[str, str]:
    """A task-started's args and kwargs: its reprs, or its small body (bytes) and content type."""
    if not isinstance(first, bytes):
        return first, second
    try:
        args, kwargs = serializers.loads(first, second, _READABLE)
        return short_repr(list(args)), short_repr(kwargs)
    except Exception:  # noqa: BLE001 - a reader shows what it can
        return "<undecodable body>", ""


# --- what a reader accepts ------------------------------------------------------------------------------
_NONE = type(None)
_NUMBER: FrozenSet[type] = frozenset({int, float})
_OPT_STR: FrozenSet[type] = frozenset({str, _NONE})
_OPT_INT: FrozenSet[type] = frozenset({int, _NONE})
_OPT_NUMBER: FrozenSet[type] = frozenset({int, float, _NONE})
FIELD_TYPES: Dict[str, FrozenSet[type]] = {
    # every event
    "type": frozenset({str}), "ts": _NUMBER, "hostname": _OPT_STR, "pid": _OPT_INT,
    # task events
    "uuid": _OPT_STR, "name": _OPT_STR, "queue": _OPT_STR, "retries": _OPT_INT, "root_id": _OPT_STR,
    "parent_id": _OPT_STR, "group_id": _OPT_STR, "sent_at": _OPT_NUMBER, "eta": _OPT_NUMBER,
    "expires": _OPT_NUMBER, "priority": _OPT_INT, "args": _OPT_STR, "kwargs": _OPT_STR, "runtime": _OPT_NUMBER,
    "exception": _OPT_STR, "reason": _OPT_STR, "message": frozenset({bytes, _NONE}),
    "requeue": frozenset({bool, _NONE}), "dead": frozenset({bool, _NONE}),
    # worker events
    "freq": _OPT_NUMBER, "loadavg": frozenset({list, _NONE}), "queues": frozenset({list, _NONE}),
    "concurrency": _OPT_INT, "processed": _OPT_INT, "active": _OPT_INT, "started": _OPT_NUMBER, "pool": _OPT_STR,
}


def problem_of(ev: Dict[str, Any]) -> Optional[str]:
    """None when every field of the event `ev` that a reader uses has its documented type, else what
    is wrong (a bool is not a number here; a task event needs a uuid)."""
    known = FIELD_TYPES.get
    for field, value in ev.items():
        allowed = known(field)
        if allowed is None:
            if type(field) is not str:
                return f"a field name is a {type(field).__name__}"
            continue  # a field no reader uses
        if type(value) not in allowed:
            return f"event field {field!r} is a {type(value).__name__}"
    if "type" not in ev or "ts" not in ev:
        return "an event without type or ts"
    if ev["type"].startswith("task-") and not ev.get("uuid"):
        return f"a {ev['type'][:40]} event without uuid"
    return None


class Reader:
    """Follows `minique:events` for one consumer: `read()` as below, and a log line for the first
    malformed event of each kind (later ones are counted in `skipped`, logged at debug level)."""

    def __init__(self, client: Any, last_id: str = "0-0"):
        self.client = client
        self.last_id = last_id
        self.skipped = 0
        self._told: Set[str] = set()

    def read(self, count: int = 100, block: Optional[float] = None) -> List[Dict[str, Any]]:
        """The next events (at most `count` stream entries' worth), in order; advances `last_id`."""
        return [ev for _, evs in self.read_entries(count, block) for ev in evs]

    def read_entries(self, count: int = 100, block: Optional[float] = None
                     ) -> List[Tuple[str, List[Dict[str, Any]]]]:
        """As `read`, entry by entry: (stream entry id, its events) (a reader that counts each entry once)."""
        self.last_id, found = _read_entries(self.client, self.last_id, count, block, self._malformed)
        return found

    def _malformed(self, entry_id: str, problem: str) -> None:
        self.skipped += 1
        if problem in self._told or len(self._told) > 100:
            log.debug("skipped a malformed event (entry %s of %s): %s", entry_id, keys.EVENTS, problem)
            return
        self._told.add(problem)
        log.warning("skipped a malformed event (entry %s of %s): %s; reading goes on (further ones like it "
                    "are logged at debug level)", entry_id, keys.EVENTS, problem)


def read(client: Any, last_id: str = "0-0", count: int = 100, block: Optional[float] = None
         ) -> Tuple[str, Iterator[Dict[str, Any]]]:
    """Events after `last_id`: (new last id, events in order). Malformed ones are skipped silently
    (a `Reader` logs them)."""
    last_id, found = _read(client, last_id, count, block, None)
    return last_id, iter(found)


def _read(client: Any, last_id: str, count: int, block: Optional[float],
          malformed: Optional[Callable[[str, str], None]]) -> Tuple[str, List[Dict[str, Any]]]:
    last_id, entries = _read_entries(client, last_id, count, block, malformed)
    return last_id, [ev for _, evs in entries for ev in evs]


def _read_entries(client: Any, last_id: str, count: int, block: Optional[float],
                  malformed: Optional[Callable[[str, str], None]]
                  ) -> Tuple[str, List[Tuple[str, List[Dict[str, Any]]]]]:
    kwargs = {"count": count}
    if block:
        kwargs["block"] = int(block * 1000)
    found = client.xread({keys.EVENTS: last_id}, **kwargs)
    out: List[Tuple[str, List[Dict[str, Any]]]] = []
    for _, entries in found or ():
        for entry_id, fields in entries:
            last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            report = None if malformed is None else (lambda problem, at=last_id: malformed(at, problem))
            try:
                batch = serializers.unpack(fields[b"b"])
            except Exception as exc:  # noqa: BLE001 - not msgpack, or no field b: skipped
                if report is not None:
                    report(f"the entry is not a msgpack batch ({type(exc).__name__})")
                continue
            out.append((last_id, list(expand(batch, report))))
    return last_id, out
