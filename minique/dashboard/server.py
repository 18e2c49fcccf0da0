"""The dashboard's HTTP server: static pages, a JSON API behind each page, actions, and /metrics.

stdlib ThreadingHTTPServer only. Security:

* binds 127.0.0.1 unless told otherwise;
* `--basic-auth user:pass` (several, comma-separated) and/or `--token T` (sent as
  `Authorization: Bearer T`, or once as `?token=T`, which sets an HttpOnly cookie)
  protect every route but /healthz; without either the dashboard is open (and says so);
* every state-changing action is a POST that must carry the `X-CSRF-Token` header with the
  token from `GET /api/session` (per process, random; a cross-site page cannot read it),
  and, when the browser sends an Origin, that origin must be this server;
* strict Content-Security-Policy (no inline script, no third-party origin), nosniff,
  no framing. All static files ship in the package: no CDN.

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
    POST /api/tasks/<id>/retry      re-send a failed task (same name, args, kwargs, queue, priority)
    POST /api/tasks/<id>/revoke     revoke ({"terminate": true} to end it if running)
    POST /api/dlq/<entry id>/replay send a dead letter back to its queue
"""
from __future__ import annotations

import base64
import hmac
import json
import logging
import mimetypes
import os
import re
import secrets
import threading
import time
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from .. import keys, message as message_mod, states
from .state import State

log = logging.getLogger("minique.dashboard")
STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
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
                 rescan_interval: float = 30.0):
        self.app = app
        self.state = State(app, max_tasks=max_tasks, sample_interval=sample_interval,
                           rescan_interval=rescan_interval)
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
                "max_tasks": self.state.index.limit}

    def overview(self) -> Dict[str, Any]:
        workers = self.state.workers.list()
        latest = self.state.history.latest()
        stats = self.state.index.stats()
        return {"workers": {"online": sum(w["status"] == "online" for w in workers), "total": len(workers)},
                "tasks": stats, "waiting": sum(q["waiting"] for q in (latest or {}).get("queues", {}).values()),
                "dead_letters": (latest or {}).get("dead_letters", 0), "time": time.time()}

    def tasks(self, q: Dict[str, List[str]]) -> Dict[str, Any]:
        def one(name: str) -> Optional[str]:
            v = (q.get(name) or [""])[0].strip()
            return v or None

        def num(name: str) -> Optional[float]:
            v = one(name)
            try:
                return float(v) if v else None
            except ValueError:
                raise HTTPError(400, f"{name} must be a number") from None
        limit = int(num("limit") or 100)
        out = self.state.index.summaries(state=one("state"), name=one("name"), worker=one("worker"),
                                         since=num("since"), until=num("until"), search=one("search"),
                                         limit=max(1, min(limit, 1000)), offset=int(num("offset") or 0))
        stats = self.state.index.stats()
        out["names"] = stats["names"]
        out["workers"] = sorted({w["hostname"] for w in self.state.workers.list()})
        out["indexed"] = stats["tasks"]
        return out

    def task(self, tid: str) -> Dict[str, Any]:
        rec = self.state.index.get(tid)
        meta = self.app.backend.get_meta(tid)
        if rec is None and meta["status"] == states.PENDING:
            raise HTTPError(404, f"no task {tid} in the index or the result store")
        out: Dict[str, Any] = {"id": tid, "state": meta["status"], "indexed": rec is not None}
        if rec is not None:
            body = rec.pop("body", None)
            rec.pop("rank", None)
            rec.pop("content_type", None)
            out.update(rec)
            out["retryable"] = body is not None
            if meta["status"] != states.PENDING and states.precedence(meta["status"]) < states.precedence(rec["state"]):
                out["state"] = meta["status"]
            elif rec["state"] != states.PENDING:
                out["state"] = rec["state"]
        result = meta.get("result")
        out["result"] = _jsonable(result) if meta["status"] == states.SUCCESS else None
        if meta["status"] in states.EXCEPTION_STATES and result is not None:
            out["error"] = _bounded_repr(result)
        out["traceback"] = meta.get("traceback")
        out["date_done"] = meta.get("date_done")
        out["result_state"] = meta["status"]
        started, ended = out.get("started"), out.get("succeeded") or out.get("failed") or out.get("retried")
        if out.get("sent_at") and started:
            out["queue_wait"] = max(0.0, started - max(out["sent_at"], out.get("eta") or 0))
        if out.get("runtime") is None and started and ended:
            out["runtime"] = max(0.0, ended - started)
        out["children"] = self.state.index.children_of(tid)
        for link, name in (("parent_id", "parent"), ("root_id", "root"), ("retry_of", "retry_of_task"),
                           ("retried_as", "retried_as_task")):
            other = out.get(link)
            if other and other != tid:
                known = self.state.index.get(other) or {}
                out[name] = {"id": other, "name": known.get("name"), "state": known.get("state")}
        return out

    def queues(self) -> Dict[str, Any]:
        from ..metrics import queue_sample
        now = queue_sample(self.app, self.state.queues())
        return {"now": now, "history": self.state.history.series(), "interval": self.state.sample_interval}

    def failed(self, q: Dict[str, List[str]]) -> Dict[str, Any]:
        limit = int((q.get("limit") or ["200"])[0] or 200)
        return self.state.index.summaries(state=states.FAILURE, limit=max(1, min(limit, 1000)))

    def dlq(self, q: Dict[str, List[str]]) -> Dict[str, Any]:
        count = max(1, min(int((q.get("count") or ["100"])[0] or 100), 1000))
        start = (q.get("start") or ["-"])[0] or "-"
        out = []
        for entry_id, fields in self.app.broker.dead_letters(count, start):
            item = {"entry": entry_id, "task_id": fields.get("task_id") or None, "queue": fields.get("queue"),
                    "reason": fields.get("reason"), "worker": fields.get("worker"),
                    "time": float(fields.get("time") or 0) or None, "name": None, "args": None}
            try:
                msg = message_mod.decode(fields.get("m") or b"")
                item["name"] = msg.task
                try:
                    args, kwargs = msg.args_kwargs(self.app.accept)
                    item["args"], item["kwargs"] = _bounded_repr(args, 300), _bounded_repr(kwargs, 300)
                except Exception:  # noqa: BLE001
                    pass
            except Exception:  # noqa: BLE001 - undecodable: that is often why it is here
                item["name"] = None
            out.append(item)
        total = self.app.broker_client.xlen(keys.DLQ)
        return {"dead_letters": out, "total": total}

    # --- API: actions -------------------------------------------------------------------------------
    def retry(self, tid: str) -> Dict[str, Any]:
        rec = self.state.index.get(tid)
        if rec is None:
            raise HTTPError(404, f"no task {tid} in the index")
        if rec.get("state") != states.FAILURE:
            raise HTTPError(409, f"task {tid} is {rec.get('state')}, not FAILURE")
        body = rec.get("body")
        if body is None:
            raise HTTPError(409, "its message was not captured (events off, or a body over the size limit)")
        new_id = message_mod.new_id()
        msg = message_mod.Message(id=new_id, task=rec["name"], body=body,
                                  content_type=rec.get("content_type") or "json", queue=rec.get("queue") or
                                  self.app.conf.task_default_queue, priority=int(rec.get("priority") or 0),
                                  root_id=new_id, sent_at=time.time(), headers={"retry_of": tid})
        if self.app.conf.security_key:
            from ..signing import sign
            msg = sign(msg, self.app.conf.security_key)
        self.app.publish(None, msg)
        self.state.index.annotate(tid, retried_as=new_id)
        self.state.index.add_placeholder(new_id, name=msg.task, queue=msg.queue, retry_of=tid,
                                         args=rec.get("args"), kwargs=rec.get("kwargs"), updated=time.time())
        log.info("task %s[%s] re-sent as %s from the dashboard", msg.task, tid, new_id)
        return {"ok": True, "id": new_id}

    def revoke(self, tid: str, body: Dict[str, Any]) -> Dict[str, Any]:
        self.app.control.revoke(tid, terminate=bool(body.get("terminate")))
        return {"ok": True, "id": tid}

    def replay(self, entry: str) -> Dict[str, Any]:
        if not re.fullmatch(r"\d+-\d+", entry):
            raise HTTPError(400, "bad dead-letter entry id")
        if not self.app.broker.replay_dead_letter(entry):
            raise HTTPError(404, f"no dead letter {entry}")
        return {"ok": True, "entry": entry}


class Handler(BaseHTTPRequestHandler):
    dashboard: Dashboard
    server_version = "minique-dashboard"
    protocol_version = "HTTP/1.1"

    # --- plumbing -----------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, extra: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
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
        dash = self.dashboard
        self.body = b""
        if method == "POST":  # read it first: a keep-alive connection must not keep an unread body
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.close_connection = True
                return self._error(413, "request body too large")
            self.body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        if not dash.host_ok(self.headers):
            return self._error(421, "unexpected Host header (the dashboard is bound to loopback)")
        if path == "/healthz":
            return self._send(200, b"ok\n", "text/plain; charset=utf-8")
        allowed, set_cookie = dash.authorized(self.headers, query)
        if not allowed:
            return self._error(401, "authentication required")
        extra = {}
        if set_cookie:
            extra["Set-Cookie"] = f"minique_token={dash.token}; HttpOnly; SameSite=Strict; Path=/"
        try:
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
            api = {
                "/api/session": lambda: dash.session(),
                "/api/overview": lambda: dash.overview(),
                "/api/workers": lambda: {"workers": dash.state.workers.list()},
                "/api/tasks": lambda: dash.tasks(query),
                "/api/queues": lambda: dash.queues(),
                "/api/failed": lambda: dash.failed(query),
                "/api/dlq": lambda: dash.dlq(query),
            }.get(path)
            if api is not None:
                return self._json(200, api(), extra)
            m = re.fullmatch(r"/api/tasks/([\w\-.:]{1,200})", path)
            if m:
                return self._json(200, dash.task(m.group(1)), extra)
            raise HTTPError(404, "not found")
        except HTTPError as exc:
            return self._error(exc.status, exc.message)
        except Exception as exc:  # noqa: BLE001 - answer 500, keep serving
            log.exception("dashboard error on %s %s", method, self.path)
            return self._error(500, f"{type(exc).__name__}: {exc}")

    def _post(self, path: str) -> None:
        dash = self.dashboard
        if not dash.csrf_ok(self.headers):
            raise HTTPError(403, "missing or wrong X-CSRF-Token (get it from /api/session)")
        raw = self.body
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise HTTPError(400, "the request body must be JSON") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        m = re.fullmatch(r"/api/tasks/([\w\-.:]{1,200})/(retry|revoke)", path)
        if m:
            tid, action = m.groups()
            return self._json(200, dash.retry(tid) if action == "retry" else dash.revoke(tid, body))
        m = re.fullmatch(r"/api/dlq/([\d-]{3,40})/replay", path)
        if m:
            return self._json(200, dash.replay(m.group(1)))
        raise HTTPError(404, "not found")

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
          refresh: float = 1.5, rescan_interval: float = 30.0) -> DashboardServer:
    """Build the dashboard server for `app` (call .serve_forever() or .start())."""
    for pair in basic_auth or ():
        if ":" not in pair:
            raise ValueError("--basic-auth takes user:password (comma-separated for several)")
    if os.environ.get("MINIQUE_DASHBOARD_TOKEN") and not token:
        token = os.environ["MINIQUE_DASHBOARD_TOKEN"]
    dash = Dashboard(app, basic_auth=basic_auth, token=token, max_tasks=max_tasks,
                     sample_interval=sample_interval, refresh=refresh, rescan_interval=rescan_interval)
    return DashboardServer(dash, host, port)


__all__ = ["Dashboard", "DashboardServer", "serve"]
