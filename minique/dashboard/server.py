"""The dashboard's HTTP server: static pages, a JSON API behind each page, actions, and /metrics.

stdlib ThreadingHTTPServer only. Security:

* binds 127.0.0.1 unless told otherwise;
* `--basic-auth user:pass` (several, comma-separated) and/or `--token T` (sent as
  `Authorization: Bearer T`, or once as `?token=T`, which sets an HttpOnly cookie)
  protect every route but /healthz; without either the dashboard is open (and says so);
* every state-changing action is a POST that must carry the `X-CSRF-Token` header with the
  token from `GET /api/session` (per process, random; a cross-site page cannot read it),
  and, when the browser sends an Origin, that origin must be this server;
* nothing of a request body is read before the request is authenticated and its CSRF token
  checked; a body needs a `Content-Length` of at most MAX_BODY bytes (else 400 or 413, the
  body unread and the connection closed); the request target is at most MAX_TARGET bytes
  (414); a bad query parameter is a 400 that says which; an internal error is a 500 that
  says to look in the log, never the exception's text;
* strict Content-Security-Policy (no inline script, no third-party origin), nosniff,
  no framing. All static files ship in the package: no CDN;
* what it shows of a message is `display.describe_for_display`: json and msgpack only, after
  the signature when `security_key` is set; results are decoded the same way (no pickle,
  exceptions described, never imported); a Redis URL is shown with its password masked.

Routes (GET unless noted):
    /                               the single-page UI (static/index.html)
    /static/<file>                  its script, style sheet and icon
    /healthz                        "ok" (no auth: for load balancers)
    /metrics                        cluster-wide gauges (queues, dead letters, workers)
    /api/session                    {"csrf": ..., "refresh": s, "auth": ...}
    /api/overview                   counts for the header
    /api/workers                    workers: status, pool, load, processed, last heartbeat
    /api/tasks?state=&name=&worker=&since=&until=&search=&limit=&offset=
    /api/tasks/<id>                 one task: events, timing, result, traceback, parent/children
    /api/queues                     lengths now (per priority), delayed, unacked, and their history
    /api/failed                     failed tasks (newest first), with whether they can be re-sent
    /api/dlq?count=&start=          dead letters
    /api/throughput                 succeeded, failed, retried per second over the last hour (per 10 s)
    POST /api/tasks/<id>/retry      re-send a failed task's message, the bytes its task-failed event carried
                                    (checked: it decodes, is that task's, and its signature verifies)
    POST /api/tasks/<id>/revoke     revoke ({"terminate": true} to end it if running)
    POST /api/dlq/<entry id>/replay send a dead letter's message (checked the same way) back to its queue
    POST /api/workers/<name>/shutdown            warm shutdown of that worker
    POST /api/workers/<name>/pool_grow|pool_shrink  ({"n": 1}) its pool, by n processes
    POST /api/rate_limit            ({"task": name, "rate_limit": "10/s"}; "0": none) on every worker

Every action (and every refused one) is logged on the `minique.dashboard.audit` logger: who (the
Basic user, "token", or "anonymous"), from where, what, on what, and how it ended.
"""
from __future__ import annotations

import base64
import hmac
import json
import logging
import math
import mimetypes
import os
import re
import secrets
import threading
import time
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis

from .. import keys, serializers, states
from ..config import mask_url
from ..display import DISPLAYABLE, Refused, checked_message, describe_for_display
from .state import State

log = logging.getLogger("minique.dashboard")
audit = logging.getLogger("minique.dashboard.audit")
STATIC = Path(__file__).parent / "static"
MAX_BODY = 32 * 1024          # bytes of request body (the API's bodies are a few bytes of JSON)
MAX_TARGET = 8 * 1024         # bytes of request target (path and query string)
MAX_QUERY_FIELDS = 32
REQUEST_TIMEOUT = 30.0        # seconds a connection may take to send a request (then it is closed)
_DLQ_START = re.compile(r"-|\(?[0-9]{1,20}(-[0-9]{1,20})?")
CONTROL_TIMEOUT = 2.0         # seconds a worker action waits for the worker's answer
_TASK_ACTION = re.compile(r"/api/tasks/([\w\-.:]{1,200})/(retry|revoke)")
_DLQ_ACTION = re.compile(r"/api/dlq/([\d-]{3,40})/replay")
_RATE = re.compile(r"[0-9]{1,9}(\.[0-9]{1,6})?(/[smh])?")  # Celery's syntax ("0": no limit)
_WORKER_ACTION = re.compile(r"/api/workers/([^/]{1,300})/(shutdown|pool_grow|pool_shrink)")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _bounded_repr(value: Any, limit: int = 10000) -> str:
    from ..events import short_repr
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        return short_repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _one(q: Dict[str, List[str]], name: str) -> Optional[str]:
    """A query parameter's value, stripped; None when absent or empty."""
    v = (q.get(name) or [""])[0].strip()
    return v or None


def _int_param(q: Dict[str, List[str]], name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter, brought into [low, high]; 400 when it is not an integer."""
    v = _one(q, name)
    if v is None:
        return default
    if not re.fullmatch(r"[+-]?[0-9]{1,18}", v):
        raise HTTPError(400, f"{name} must be an integer")
    return max(low, min(int(v), high))


def _time_param(q: Dict[str, List[str]], name: str) -> Optional[float]:
    """A time (epoch seconds) query parameter; 400 when it is not a finite number."""
    v = _one(q, name)
    if v is None:
        return None
    try:
        value = float(v)
    except ValueError:
        raise HTTPError(400, f"{name} must be a number (epoch seconds)") from None
    if not math.isfinite(value):
        raise HTTPError(400, f"{name} must be a finite number (epoch seconds)")
    return value


def _shown_message(data: bytes, security_key: Any) -> Dict[str, Any]:
    """`describe_for_display` with the arguments as bounded reprs (what the pages show)."""
    shown = describe_for_display(data, security_key)
    for field in ("args", "kwargs"):
        if shown[field] is not None:
            shown[field] = _bounded_repr(shown[field], 2000)
    return shown


def _jsonable(value: Any, depth: int = 0) -> Any:
    """Results as JSON when they are plain data, else their repr."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if depth < 6 and isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value[:1000]]
    if depth < 6 and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _jsonable(v, depth + 1) for k, v in list(value.items())[:1000]}
    return _bounded_repr(value)


class Dashboard:
    """The application behind the HTTP handler: state, auth, and the JSON API."""

    def __init__(self, app: Any, basic_auth: Optional[List[str]] = None, token: Optional[str] = None,
                 max_tasks: int = 10000, sample_interval: float = 2.0, refresh: float = 1.5,
                 rescan_interval: float = 30.0, prune_after: float = 600.0):
        self.app = app
        self.state = State(app, max_tasks=max_tasks, sample_interval=sample_interval,
                           rescan_interval=rescan_interval, prune_after=prune_after)
        self.basic = [a.encode() for a in (basic_auth or [])]
        self.token = token
        self.csrf = secrets.token_urlsafe(32)
        self.refresh = refresh
        self.loopback_only = False  # set when bound to a loopback address: then only loopback Host names pass
        self.registry = self._registry()

    def _registry(self) -> Any:
        from prometheus_client import CollectorRegistry

        from ..metrics import ClusterCollector
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ClusterCollector(self.app, self.state.queues))
        return registry

    @property
    def auth_required(self) -> bool:
        return bool(self.basic or self.token)

    # --- auth ---------------------------------------------------------------------------------------
    def authorized(self, headers: Any, query: Dict[str, List[str]]) -> Tuple[bool, bool]:
        """(allowed, set the token cookie)."""
        if not self.auth_required:
            return True, False
        header = headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if self.basic and scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True)
            except Exception:  # noqa: BLE001
                given = b""
            if any(hmac.compare_digest(given, pair) for pair in self.basic):
                return True, False
        if self.token:
            want = self.token.encode()
            if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), want):
                return True, False
            cookie = SimpleCookie(headers.get("Cookie", ""))
            if "minique_token" in cookie and hmac.compare_digest(cookie["minique_token"].value.encode(), want):
                return True, False
            given_token = (query.get("token") or [""])[0]
            if given_token and hmac.compare_digest(given_token.encode(), want):
                return True, True
        return False, False

    def who(self, headers: Any) -> str:
        """Who acts, for the audit log: the Basic user (its password never logged), "token", or "anonymous"."""
        scheme, _, value = (headers.get("Authorization") or "").partition(" ")
        if self.basic and scheme.lower() == "basic":
            try:
                return base64.b64decode(value.strip(), validate=True).decode(errors="replace").partition(":")[0]
            except Exception:  # noqa: BLE001
                return "?"
        if self.token:
            return "token"
        return "anonymous"

    def host_ok(self, headers: Any) -> bool:
        """Against DNS rebinding: a dashboard bound to loopback answers loopback host names only."""
        if not self.loopback_only:
            return True
        host = urlsplit("//" + (headers.get("Host") or "")).hostname or ""
        return host in ("localhost", "127.0.0.1", "::1") or host.endswith(".localhost")

    def csrf_ok(self, headers: Any) -> bool:
        token = headers.get("X-CSRF-Token", "")
        if not token or not hmac.compare_digest(token.encode(), self.csrf.encode()):
            return False
        origin = headers.get("Origin")
        if origin and origin != "null":
            host = headers.get("Host", "")
            if urlsplit(origin).netloc != host:
                return False
        return True

    # --- API: reading -------------------------------------------------------------------------------
    def session(self) -> Dict[str, Any]:
        from .. import __version__
        return {"csrf": self.csrf, "refresh": self.refresh, "auth": self.auth_required, "version": __version__,
                "max_tasks": self.state.index.limit, "broker": mask_url(str(self.app.conf.broker_url)),
                "signed": bool(self.app.conf.security_key)}

    def overview(self) -> Dict[str, Any]:
        workers = self.state.workers.list()
        latest = self.state.history.latest()
        stats = self.state.index.stats()
        return {"workers": {"online": sum(w["status"] == "online" for w in workers), "total": len(workers)},
                "tasks": stats, "waiting": sum(q["waiting"] for q in (latest or {}).get("queues", {}).values()),
                "dead_letters": (latest or {}).get("dead_letters", 0), "time": time.time()}

    def tasks(self, q: Dict[str, List[str]]) -> Dict[str, Any]:
        out = self.state.index.summaries(state=_one(q, "state"), name=_one(q, "name"), worker=_one(q, "worker"),
                                         since=_time_param(q, "since"), until=_time_param(q, "until"),
                                         search=_one(q, "search"), limit=_int_param(q, "limit", 100, 1, 1000),
                                         offset=_int_param(q, "offset", 0, 0, 10**9))
        stats = self.state.index.stats()
        out["names"] = stats["names"]
        out["workers"] = sorted({w["hostname"] for w in self.state.workers.list()})
        out["indexed"] = stats["tasks"]
        out["now"] = time.time()  # (the pages count running tasks' elapsed time from the server's clock)
        return out

    def task(self, tid: str) -> Dict[str, Any]:
        rec = self.state.index.get(tid)
        meta = self.stored_result(tid)
        if rec is None and meta["status"] == states.PENDING:
            raise HTTPError(404, f"no task {tid} in the index or the result store")
        out: Dict[str, Any] = {"id": tid, "state": meta["status"], "indexed": rec is not None}
        if rec is not None:
            data = rec.pop("message", None)
            rec.pop("rank", None)
            out.update(rec)
            out["retryable"] = data is not None
            # what Retry would send, decoded from the very bytes it sends
            out["resend"] = _shown_message(data, self.app.conf.security_key) if data is not None else None
            # the result store is the later word, except about a run older than a re-send
            stale = rec.get("resent_at") and (meta["date_done"] or 0) < rec["resent_at"]
            if meta["status"] != states.PENDING and not stale and \
                    states.precedence(meta["status"]) < states.precedence(rec["state"]):
                out["state"] = meta["status"]
            elif rec["state"] != states.PENDING or stale:
                out["state"] = rec["state"]
        out["result"] = meta["result"]
        out["error"] = meta["error"]
        out["traceback"] = meta["traceback"]
        out["date_done"] = meta["date_done"]
        out["result_state"] = meta["status"]
        if "meta" in meta:
            out["meta"] = meta["meta"]
        started, ended = out.get("started"), out.get("succeeded") or out.get("failed") or out.get("retried")
        if out.get("sent_at") and started:
            out["queue_wait"] = max(0.0, started - max(out["sent_at"], out.get("eta") or 0))
        if out.get("runtime") is None and started and ended:
            out["runtime"] = max(0.0, ended - started)
        out["now"] = time.time()
        out["children"] = self.state.index.children_of(tid)
        for link, name in (("parent_id", "parent"), ("root_id", "root")):
            other = out.get(link)
            if other and other != tid:
                known = self.state.index.get(other) or {}
                out[name] = {"id": other, "name": known.get("name"), "state": known.get("state")}
        return out

    def stored_result(self, tid: str) -> Dict[str, Any]:
        """The result store's record of `tid` as the pages show it: `status`, `result` (a json or
        msgpack value; anything else, pickle above all, is not decoded), `error` (an exception
        described from its stored class name and arguments: nothing is imported or built),
        `traceback`, `date_done`, and `meta` for a custom state (update_state). Any Redis client
        can write the record: a malformed one is shown as such."""
        pipe = self.app.backend.client.pipeline(transaction=False)
        pipe.lindex(keys.ready(tid), 0)
        pipe.get(keys.result(tid))
        final, current = pipe.execute()
        raw = final if final is not None else current
        out: Dict[str, Any] = {"status": states.PENDING, "result": None, "error": None, "traceback": None,
                               "date_done": None}
        if raw is None:
            return out
        try:
            meta = serializers.unpack(raw)
            status = meta["s"]
            if status not in states.ALL_STATES and not _custom_state(status):
                raise ValueError(status)
        except Exception:  # noqa: BLE001 - not a record minique writes
            out.update(status="UNKNOWN", error="<a malformed record in the result store>")
            return out
        out["status"] = status
        done, tb = meta.get("t"), meta.get("tb")
        out["date_done"] = done if status in states.READY_STATES and isinstance(done, (int, float)) else None
        out["traceback"] = tb[:20000] if isinstance(tb, str) else None
        content_type = meta.get("ct", "json")
        if content_type not in DISPLAYABLE:
            value: Any = f"<a {str(content_type)[:40]} result is not decoded for display (only json and msgpack are)>"
        else:
            try:
                value = serializers.loads(meta.get("r", b""), content_type, DISPLAYABLE)
            except Exception:  # noqa: BLE001
                value = "<an undecodable result>"
        if status == states.SUCCESS:
            out["result"] = _jsonable(value)
        elif status in states.EXCEPTION_STATES:
            out["error"] = _described_exception(value)
        elif status not in states.ALL_STATES:  # update_state(state="PROGRESS", meta={...}): its meta
            out["meta"] = _jsonable(value)
        return out

    def queues(self) -> Dict[str, Any]:
        from ..metrics import queue_sample
        now = queue_sample(self.app, self.state.queues())
        shown = set(self.state.shown_queues(now["queues"]))
        now["queues"] = {q: info for q, info in now["queues"].items() if q in shown}
        history = self.state.history.series()
        for point in history:
            for field in ("waiting", "delayed"):
                point[field] = {q: n for q, n in point[field].items() if q in shown}
        return {"now": now, "history": history, "interval": self.state.sample_interval}

    def throughput(self) -> Dict[str, Any]:
        return self.state.throughput.series()

    def failed(self, q: Dict[str, List[str]]) -> Dict[str, Any]:
        return self.state.index.summaries(state=states.FAILURE, limit=_int_param(q, "limit", 200, 1, 1000))

    def dlq(self, q: Dict[str, List[str]]) -> Dict[str, Any]:
        """Dead letters with what may be shown of their messages (`describe_for_display`: never pickle,
        and with `security_key` only the arguments of messages whose signature verifies)."""
        count = _int_param(q, "count", 100, 1, 1000)
        start = _one(q, "start") or "-"
        if not _DLQ_START.fullmatch(start):
            raise HTTPError(400, "start must be a dead-letter entry id (like 1700000000000-0) or -")
        out = []
        for entry_id, fields in self.app.broker.dead_letters(count, start):
            data = fields.get("m")
            shown = _shown_message(data if isinstance(data, bytes) else b"", self.app.conf.security_key)
            try:
                when: Optional[float] = float(fields.get("time") or 0) or None
            except ValueError:
                when = None
            out.append({"entry": entry_id, "task_id": fields.get("task_id") or None, "queue": fields.get("queue"),
                        "reason": fields.get("reason"), "worker": fields.get("worker"), "time": when,
                        "name": shown["name"], "args": shown["args"], "kwargs": shown["kwargs"],
                        "verified": shown["verified"], "problem": shown["problem"]})
        total = self.app.broker_client.xlen(keys.DLQ)
        return {"dead_letters": out, "total": total}

    # --- API: actions -------------------------------------------------------------------------------
    def retry(self, tid: str) -> Dict[str, Any]:
        """Re-send a failed task's message: the bytes its task-failed event carried, as they are (same
        id, arguments, queue, priority, links), never a message built from event fields. Events are
        untrusted, so the bytes must decode, be that task's message, and (with `security_key`) carry
        a signature that verifies; the answer shows what was sent, decoded from those bytes."""
        rec = self.state.index.get(tid)
        if rec is None:
            raise HTTPError(404, f"no task {tid} in the index")
        if rec.get("state") != states.FAILURE:
            raise HTTPError(409, f"task {tid} is {rec.get('state')}, not FAILURE")
        data = rec.get("message")
        if data is None:
            raise HTTPError(409, "its message was not captured (events off, or a message over the size limit)")
        msg = self._checked(data, "not re-sent")
        if msg.id != tid:
            raise HTTPError(409, f"not re-sent: the message captured for task {tid} is task {msg.id}'s")
        now = time.time()
        if msg.eta is not None and msg.eta > now:
            self.app.broker.send_later(self.app.broker_client, msg.queue, msg.priority, data, msg.eta)
        else:
            self.app.broker.send(self.app.broker_client, msg.queue, msg.priority, data)
        self.state.index.mark_resent(tid, now)
        log.info("task %s[%s] re-sent to %s from the dashboard", msg.task, tid, msg.queue)
        return {"ok": True, "id": tid, "sent": _shown_message(data, self.app.conf.security_key)}

    def _checked(self, data: bytes, refusal: str) -> Any:
        """The message to re-send: it decodes, its signature verifies (with `security_key`), it has not
        expired; else 409 saying why."""
        try:
            msg = checked_message(data, self.app.conf.security_key)
        except Refused as exc:
            raise HTTPError(409, f"{refusal}: {exc}") from None
        if msg.expires is not None and msg.expires < time.time():
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(msg.expires))
            raise HTTPError(409, f"{refusal}: it expired at {when} (a worker would not run it)")
        return msg

    def revoke(self, tid: str, body: Dict[str, Any]) -> Dict[str, Any]:
        terminate = body.get("terminate", False)
        if not isinstance(terminate, bool):
            raise HTTPError(400, "terminate must be true or false")
        self.app.control.revoke(tid, terminate=terminate)
        return {"ok": True, "id": tid, "terminate": terminate}

    def worker_action(self, host: str, action: str, body: Dict[str, Any]) -> Dict[str, Any]:
        """A control command to one worker (a warm shutdown, or its pool grown or shrunk by `n`), and its answer;
        404 for a worker the dashboard does not know, 504 when it does not answer within CONTROL_TIMEOUT."""
        if host not in {w["hostname"] for w in self.state.workers.list(all_workers=True)}:
            raise HTTPError(404, f"no worker {host}")
        if action == "shutdown":
            replies = self.app.control.shutdown(destination=[host], reply=True, timeout=CONTROL_TIMEOUT)
        else:
            n = body.get("n", 1)
            if type(n) is not int or not 1 <= n <= 64:
                raise HTTPError(400, "n must be an integer from 1 to 64")
            command = self.app.control.pool_grow if action == "pool_grow" else self.app.control.pool_shrink
            replies = command(n, destination=[host], reply=True, timeout=CONTROL_TIMEOUT)
        answer = next((r[host] for r in replies if isinstance(r, dict) and host in r), None)
        if answer is None:
            raise HTTPError(504, f"{host} did not answer within {CONTROL_TIMEOUT:g} s")
        if isinstance(answer, dict) and "error" in answer:
            raise HTTPError(409, f"{host}: {str(answer['error'])[:500]}")
        return {"ok": True, "worker": host, "action": action, "answer": _jsonable(answer)}

    def rate_limit(self, body: Dict[str, Any]) -> Dict[str, Any]:
        """Set (or, with "0", remove) a task's rate limit on every worker (app.control.rate_limit); the
        workers' answers. 504 when none answers within CONTROL_TIMEOUT."""
        task, rate = body.get("task"), body.get("rate_limit")
        if not isinstance(task, str) or not 0 < len(task) <= 200 or not task.isprintable():
            raise HTTPError(400, "task must be a task name")
        if isinstance(rate, (int, float)) and not isinstance(rate, bool):
            rate = str(rate)
        if not isinstance(rate, str) or not _RATE.fullmatch(rate.strip()):
            raise HTTPError(400, 'rate_limit must be Celery\'s "N/s", "N/m", "N/h" or N per second ("0": none)')
        replies = self.app.control.rate_limit(task, rate.strip(), reply=True, timeout=CONTROL_TIMEOUT)
        answers = {host: _jsonable(a) for r in replies if isinstance(r, dict) for host, a in r.items()}
        if not answers:
            raise HTTPError(504, f"no worker answered within {CONTROL_TIMEOUT:g} s")
        return {"ok": True, "task": task, "rate_limit": rate.strip(), "answers": answers}

    def replay(self, entry: str) -> Dict[str, Any]:
        """Send a dead letter's message back to its queue and remove it from the dead letters, in one
        transaction: the bytes sent are the bytes read and checked (as for Retry), to the queue and
        priority the message itself names; an entry replayed by someone else meanwhile is not sent twice."""
        if not re.fullmatch(r"[0-9]{1,20}-[0-9]{1,20}", entry):
            raise HTTPError(400, "bad dead-letter entry id")
        if self.app.broker.cluster:
            return self._replay_on_cluster(entry)
        with self.app.broker_client.pipeline(transaction=True) as pipe:
            for _ in range(10):
                try:
                    pipe.watch(keys.DLQ)
                    data, msg = self._dead_letter(pipe, entry)
                    pipe.multi()
                    self.app.broker.send(pipe, msg.queue, msg.priority, data)
                    pipe.xdel(keys.DLQ, entry)
                    pipe.execute()
                    break
                except redis.exceptions.WatchError:
                    continue  # the dead letters changed between the read and the write: read again
            else:
                raise HTTPError(503, "the dead-letter stream kept changing; try again")
        return self._replayed(entry, data, msg)

    def _replay_on_cluster(self, entry: str) -> Dict[str, Any]:
        """`replay` on a Redis Cluster: the queue and the dead letters are two slots, so no transaction;
        the message is sent, then the dead letter removed (docs/scaling.md: two people replaying one
        dead letter at once may send it twice; nothing is lost)."""
        client = self.app.broker_client
        data, msg = self._dead_letter(client, entry)
        self.app.broker.send(client, msg.queue, msg.priority, data)
        client.xdel(keys.DLQ, entry)
        return self._replayed(entry, data, msg)

    def _dead_letter(self, reader: Any, entry: str) -> Tuple[bytes, Any]:
        """The bytes of dead letter `entry` and their message, checked as Retry checks (read through
        `reader`: a client, or a pipeline watching the dead letters); 404 or 409 when it cannot be replayed."""
        found = reader.xrange(keys.DLQ, min=entry, max=entry)
        if not found:
            raise HTTPError(404, f"no dead letter {entry}")
        data = found[0][1].get(b"m")
        if not isinstance(data, bytes):
            raise HTTPError(409, "not replayed: the dead letter has no message")
        return data, self._checked(data, "not replayed")

    def _replayed(self, entry: str, data: bytes, msg: Any) -> Dict[str, Any]:
        log.info("dead letter %s (task %s[%s]) sent back to %s from the dashboard", entry, msg.task, msg.id,
                 msg.queue)
        return {"ok": True, "entry": entry, "sent": _shown_message(data, self.app.conf.security_key)}


def _custom_state(status: Any) -> bool:
    """A state a task set with update_state (a name, as Celery's custom states: "PROGRESS"), shown as it is."""
    return isinstance(status, str) and 0 < len(status) <= 64 and status.isprintable()


def _printable(text: str, limit: int = 200) -> str:
    """Text from a request as one log line: control characters (a forged line break) shown escaped, bounded."""
    text = text[:limit]
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _described_exception(value: Any) -> str:
    """A stored exception as text, from its class name and arguments (never imported nor built)."""
    if isinstance(value, dict) and isinstance(value.get("exc_type"), str):
        args = value.get("exc_message")
        args = args if isinstance(args, list) else [args]
        text = value["exc_type"][:200] + "(" + ", ".join(_bounded_repr(a, 2000) for a in args) + ")"
        return cast("str", text if len(text) <= 10000 else text[:10000] + f"... ({len(text)} characters)")
    return _bounded_repr(value)


class Handler(BaseHTTPRequestHandler):
    dashboard: Dashboard
    server_version = "minique-dashboard"
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT  # a client that stops sending mid-request loses its connection, not a thread forever
    body_unread = False        # the request has a body not read (yet): the connection closes after the answer

    # --- plumbing -----------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, extra: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        if self.body_unread:  # what is left of it must not be read as the next request
            self.close_connection = True
            self.send_header("Connection", "close")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "same-origin")
        self.send_header("Content-Security-Policy", CSP)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, extra: Optional[Dict[str, str]] = None) -> None:
        self._send(status, json.dumps(obj, default=str).encode(), "application/json", extra)

    def _error(self, status: int, message: str) -> None:
        extra = {}
        if status == 401 and self.dashboard.basic:
            extra["WWW-Authenticate"] = 'Basic realm="minique dashboard", charset="UTF-8"'
        self._json(status, {"error": message}, extra)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)

    def _route(self, method: str) -> None:
        """Answer one request. Order matters: limits on what was read already (the request line and
        headers), then Host, auth and (for a POST) the CSRF token, and only then the body."""
        dash = self.dashboard
        self.body_unread = bool(self.headers.get("Transfer-Encoding")) or \
            (self.headers.get("Content-Length") or "0").strip() != "0"
        try:
            if len(self.path) > MAX_TARGET:
                raise HTTPError(414, f"request target over {MAX_TARGET} bytes")
            parts = urlsplit(self.path)
            try:
                query = parse_qs(parts.query, max_num_fields=MAX_QUERY_FIELDS)
            except ValueError:
                raise HTTPError(400, f"more than {MAX_QUERY_FIELDS} query parameters") from None
            path = parts.path
            if not dash.host_ok(self.headers):
                raise HTTPError(421, "unexpected Host header (the dashboard is bound to loopback)")
            if path == "/healthz":
                return self._send(200, b"ok\n", "text/plain; charset=utf-8")
            allowed, set_cookie = dash.authorized(self.headers, query)
            if not allowed:
                if method == "POST":
                    self._audit(*self._action_of(path), "refused: not authenticated", warn=True)
                raise HTTPError(401, "authentication required")
            extra = {}
            if set_cookie:
                extra["Set-Cookie"] = f"minique_token={dash.token}; HttpOnly; SameSite=Strict; Path=/"
            if method == "POST":
                return self._post(path)
            if path in ("/", "/index.html"):
                return self._static("index.html", extra)
            if path.startswith("/static/"):
                return self._static(path[len("/static/"):], extra)
            if path == "/metrics":
                from ..metrics import metrics_payload
                body, ctype = metrics_payload(dash.registry, self.headers.get("Accept", ""))
                return self._send(200, body, ctype)
            api: Optional[Callable[[], Any]] = {
                "/api/session": lambda: dash.session(),
                "/api/overview": lambda: dash.overview(),
                "/api/workers": lambda: {"workers": dash.state.workers.list()},
                "/api/tasks": lambda: dash.tasks(query),
                "/api/queues": lambda: dash.queues(),
                "/api/failed": lambda: dash.failed(query),
                "/api/dlq": lambda: dash.dlq(query),
                "/api/throughput": lambda: dash.throughput(),
            }.get(path)
            if api is not None:
                return self._json(200, api(), extra)
            m = re.fullmatch(r"/api/tasks/([\w\-.:]{1,200})", path)
            if m:
                return self._json(200, dash.task(m.group(1)), extra)
            raise HTTPError(404, "not found")
        except HTTPError as exc:
            return self._error(exc.status, exc.message)
        except redis.exceptions.RedisError as exc:
            log.warning("dashboard: Redis error on %s %s: %s", method, self.path[:200], exc)
            return self._error(503, f"Redis is unreachable or failed ({type(exc).__name__}) at "
                                    f"{mask_url(str(dash.app.conf.broker_url))}; see the dashboard's log")
        except Exception:  # noqa: BLE001 - answer 500, keep serving; the text stays in the log
            log.exception("dashboard error on %s %s", method, self.path)
            return self._error(500, "internal error (the dashboard's log has the details)")

    def _read_body(self) -> bytes:
        """The request body, read only when its Content-Length is one number within MAX_BODY."""
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(400, "send the body with a Content-Length (Transfer-Encoding is not accepted)")
        given = self.headers.get_all("Content-Length") or []
        if len(given) != 1:
            raise HTTPError(400, "a POST needs one Content-Length header")
        if not re.fullmatch(r"[0-9]{1,12}", given[0].strip()):
            raise HTTPError(400, "Content-Length must be a number of bytes")
        length = int(given[0])
        if length > MAX_BODY:
            raise HTTPError(413, f"request body over {MAX_BODY} bytes")
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            raise HTTPError(400, "the request body ended early")
        self.body_unread = False
        return body

    def _post(self, path: str) -> None:
        dash = self.dashboard
        action, target = self._action_of(path)
        if not dash.csrf_ok(self.headers):
            self._audit(action, target, "refused: missing or wrong X-CSRF-Token", warn=True)
            raise HTTPError(403, "missing or wrong X-CSRF-Token (get it from /api/session)")
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise HTTPError(400, "the request body must be JSON") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        try:
            m = _TASK_ACTION.fullmatch(path)
            if m:
                tid, what = m.groups()
                answer = dash.retry(tid) if what == "retry" else dash.revoke(tid, body)
            elif _DLQ_ACTION.fullmatch(path):
                answer = dash.replay(path.split("/")[3])
            elif _WORKER_ACTION.fullmatch(path):
                answer = dash.worker_action(target, action, body)  # (_action_of matched the same pattern)
            elif path == "/api/rate_limit":
                answer = dash.rate_limit(body)
            else:
                raise HTTPError(404, "not found")
        except HTTPError as exc:
            self._audit(action, target, f"refused ({exc.status}): {exc.message}", warn=True)
            raise
        except Exception as exc:
            self._audit(action, target, f"failed: {type(exc).__name__}", warn=True)
            raise
        self._audit(action, target, "done" + (" (terminate)" if body.get("terminate") is True else "")
                    + (f" (n={body.get('n', 1)})" if action in ("pool_grow", "pool_shrink") else "")
                    + (f" ({_printable(str(body.get('task')))} {_printable(str(body.get('rate_limit')))})"
                       if action == "rate_limit" else ""))
        return self._json(200, answer)

    @staticmethod
    def _action_of(path: str) -> Tuple[str, str]:
        """(action, its target) of a POST path, for the audit log."""
        for pattern in (_TASK_ACTION, _WORKER_ACTION):
            m = pattern.fullmatch(path)
            if m:
                return m.group(2), unquote(m.group(1))
        m = _DLQ_ACTION.fullmatch(path)
        if m:
            return "replay", m.group(1)
        if path == "/api/rate_limit":
            return "rate_limit", "every worker"
        return "unknown", path[:200]

    def _audit(self, action: str, target: str, outcome: str, warn: bool = False) -> None:
        audit.log(logging.WARNING if warn else logging.INFO, "dashboard action %s on %s by %s from %s: %s", action,
                  _printable(target), _printable(self.dashboard.who(self.headers)), self.client_address[0],
                  _printable(outcome, 600), extra={"event": "dashboard-action"})

    def _static(self, name: str, extra: Dict[str, str]) -> None:
        if "/" in name or "\\" in name or name.startswith(".") or not name:
            raise HTTPError(404, "not found")
        path = STATIC / name
        if not path.is_file():
            raise HTTPError(404, "not found")
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "image/svg+xml"):
            ctype += "; charset=utf-8"
        self._send(200, path.read_bytes(), ctype, extra)

    def do_GET(self) -> None:  # noqa: N802
        self._route("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self.body_unread = True  # (never read: the connection closes after the answer)
        self._error(405, "use GET or POST")

    do_DELETE = do_PATCH = do_PUT


class DashboardServer:
    """The HTTP server plus the dashboard's background threads."""

    def __init__(self, dashboard: Dashboard, host: str = "127.0.0.1", port: int = 5555):
        self.dashboard = dashboard
        handler = type("BoundHandler", (Handler,), {"dashboard": dashboard})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        bound, self.port = self.httpd.server_address[:2]
        # typeshed allows the bytes that bind() accepts; getsockname() of an AF_INET(6) socket gives str
        assert isinstance(bound, str)
        self.host = bound
        import ipaddress
        try:
            dashboard.loopback_only = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            dashboard.loopback_only = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}/"

    def serve_forever(self) -> None:
        self.dashboard.state.start()
        try:
            self.httpd.serve_forever(poll_interval=0.5)
        finally:
            self.dashboard.state.stop()
            self.httpd.server_close()

    def start(self) -> "DashboardServer":
        """Serve in a daemon thread (for embedding and tests)."""
        threading.Thread(target=self.serve_forever, name="minique-dashboard", daemon=True).start()
        return self

    def shutdown(self) -> None:
        self.httpd.shutdown()


def serve(app: Any, host: str = "127.0.0.1", port: int = 5555, basic_auth: Optional[List[str]] = None,
          token: Optional[str] = None, max_tasks: int = 10000, sample_interval: float = 2.0,
          refresh: float = 1.5, rescan_interval: float = 30.0, prune_after: float = 600.0) -> DashboardServer:
    """Build the dashboard server for `app` (call .serve_forever() or .start())."""
    for pair in basic_auth or ():
        if ":" not in pair:
            raise ValueError("--basic-auth takes user:password (comma-separated for several)")
    if os.environ.get("MINIQUE_DASHBOARD_TOKEN") and not token:
        token = os.environ["MINIQUE_DASHBOARD_TOKEN"]
    dash = Dashboard(app, basic_auth=basic_auth, token=token, max_tasks=max_tasks,
                     sample_interval=sample_interval, refresh=refresh, rescan_interval=rescan_interval,
                     prune_after=prune_after)
    return DashboardServer(dash, host, port)


__all__ = ["Dashboard", "DashboardServer", "serve"]
