"""The worker parent's window on the outside: remote control, metrics, worker events.

* `Observer`: a thread in the worker parent answering control commands published on
  minique:control (ping, inspect, revoke, shutdown, pool_grow/pool_shrink, autoscale, rate_limit).
* `Telemetry`: what the parent sets up before forking its pool and hands to every pool
  process: the shared-memory metrics table (see minique/metrics.py), the shared rate-limit
  table (see worker/ratelimit.py) with each process's `RateLimiter`, and the `Events` object
  each process records through. It also serves /metrics (`--metrics-port`) and sends the
  worker-online/heartbeat/offline events.
"""
from __future__ import annotations

import logging
import os
import resource
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

import redis

from .. import keys, serializers
from ..logs import Once
from .consumer import revoked_ids
from .ratelimit import RateLimiter, RateLimitTable, initial_rates, parse_rate

log = logging.getLogger("minique.worker")
LIVENESS_STALL = 30.0  # seconds without a turn of the parent's loop (it turns every TICK) before /livez fails


class Telemetry:
    """Set up by the worker parent before it forks: metrics table, rate limits, events, /metrics server."""

    def __init__(self, worker: Any):
        from ..events import Events
        from ..metrics import MetricsTable
        self.worker = worker
        n = worker.pool.slots.n
        self.table = MetricsTable(n + 1)          # one region per pool slot, the last one for the parent
        self.limits = RateLimitTable()
        self.rates: Dict[str, float] = initial_rates(worker.app)
        self.publish_rates()
        self.parent = Events(worker.hostname, send=worker.send_events, recorder=self.table.recorder(n))
        self.server: Any = None
        self.health_server: Any = None

    # --- pool processes -----------------------------------------------------------------------------
    def events_for(self, slot: Any) -> Any:
        """The Events object a pool process (made in the child after fork, or a pool thread) records through."""
        from ..events import Events
        index = next(i for i, s in enumerate(self.worker.pool.slots.slots) if s is slot)
        return Events(self.worker.hostname, send=self.worker.send_events, recorder=self.table.recorder(index),
                      repr_max=self.worker.app.conf.task_argsrepr_max_size)

    def limiter_for(self, slot: Any) -> RateLimiter:
        """The rate limiter the pool process of `slot` asks before each task (see worker/ratelimit.py)."""
        return RateLimiter(self.limits, slot, self.worker.app.broker_client if self.cluster_scope else None)

    @property
    def cluster_scope(self) -> bool:
        return cast("bool", self.worker.app.conf.worker_rate_limit_scope == "cluster")

    def publish_rates(self) -> None:
        share = 1 if self.cluster_scope else max(1, self.worker.pool.size)  # cluster: one bucket for all
        self.limits.write({name: share / rate for name, rate in self.rates.items() if rate > 0})

    def set_rate(self, name: str, value: Any) -> float:
        rate = parse_rate(value)
        if rate:
            self.rates[name] = rate
        else:
            self.rates.pop(name, None)
        self.publish_rates()
        return rate

    # --- /metrics, /livez, /readyz -------------------------------------------------------------------
    def serve(self) -> None:
        from ..metrics import MetricsServer, worker_registry
        conf = self.worker.app.conf
        port = int(self.worker.metrics_port or 0)
        if port:
            host = str(conf.worker_metrics_host)  # 127.0.0.1 unless set (or MINIQUE_METRICS_HOST)
            try:
                self.server = MetricsServer(worker_registry(self.worker, self.table), host, port, self.health).start()
                log.info("metrics on http://%s:%d/metrics", host, self.server.port)
            except OSError as exc:
                log.error("cannot serve metrics on %s:%d: %s (the worker runs without them)", host, port, exc)
        health_port = int(self.worker.health_port or 0)
        if health_port:
            host = str(conf.worker_health_host)
            try:
                self.health_server = MetricsServer(None, host, health_port, self.health).start()
                log.info("health probes on http://%s:%d/livez and /readyz", host, self.health_server.port)
            except OSError as exc:
                log.error("cannot serve health probes on %s:%d: %s", host, health_port, exc)

    def health(self, probe: str) -> Tuple[bool, str]:
        """/livez: the parent's loop turned recently (a stuck parent is restarted by the orchestrator).
        /readyz: also the loop reached Redis on its last turn, the pool has a live process, and the
        worker is not stopping."""
        w = self.worker
        stalled = time.monotonic() - w.loop_at
        if stalled > LIVENESS_STALL:
            return False, f"the worker's loop has not turned for {stalled:.0f}s"
        if probe == "livez":
            return True, "ok"
        if w.stopping is not None:
            return False, f"shutting down ({w.stopping})"
        if w.pool is None or not w.pool.members:
            return False, "no pool process is alive"
        if w._unreachable_since is not None:  # the loop reaches Redis every turn: no probe of its own
            return False, f"Redis does not answer (for {time.time() - w._unreachable_since:.0f}s)"
        return True, "ok"

    # --- worker events ------------------------------------------------------------------------------
    def _send(self, type: str, **fields: Any) -> None:
        if not self.worker.send_events:
            return
        try:
            self.parent.worker(type, **fields)
            self.parent.flush(self.worker.app.broker_client)
        except redis.exceptions.RedisError as exc:
            log.debug("could not send %s: %s", type, exc)

    def online(self) -> None:
        w = self.worker
        self._send("worker-online", freq=float(w.app.conf.worker_heartbeat_interval), queues=w.queues,
                   pool=w.pool_kind, concurrency=w.pool.size if w.pool else w.concurrency)

    def heartbeat(self, info: Dict[str, Any]) -> None:
        try:
            load = os.getloadavg()
        except OSError:
            load = None
        fields = {k: v for k, v in info.items() if k not in ("hostname", "ts", "pid")}
        self._send("worker-heartbeat", freq=float(self.worker.app.conf.worker_heartbeat_interval),
                   loadavg=list(load) if load else None, **fields)

    def offline(self) -> None:
        self._send("worker-offline")

    def lost(self, task_name: Optional[str], task_id: str, queue: Optional[str], state: str, exc: BaseException,
             data: Optional[bytes]) -> None:
        """A task failed (or was terminated) with its pool process: the parent counts it and sends its event."""
        from .. import states
        from ..message import decode
        type = "task-revoked" if state == states.REVOKED else "task-failed"
        msg = None
        if data is not None:
            try:
                msg = decode(data)
            except Exception:  # noqa: BLE001
                msg = None
        try:
            if msg is not None:
                self.parent.task(type, msg, hostname=self.worker.hostname, exception=repr(exc),
                                 **({"reason": "terminated"} if type == "task-revoked" else {}))
            else:
                rec = self.parent.recorder
                rec.count(5 if type == "task-revoked" else 3, task_name or "unknown", queue or "")
                if self.worker.send_events:
                    self.parent.raw(type, uuid=task_id, name=task_name, queue=queue, hostname=self.worker.hostname,
                                    exception=repr(exc))
            if self.worker.send_events:
                self.parent.flush(self.worker.app.broker_client)
        except redis.exceptions.RedisError as err:
            log.debug("could not send the event of lost task %s: %s", task_id, err)

    def close(self) -> None:
        if self.worker._unreachable_since is None:  # (else the write would only wait out the client's retries)
            self.offline()
        for server in (self.server, self.health_server):
            if server is not None:
                server.stop()
        self.server = self.health_server = None


class Observer:
    """A thread in the worker parent that answers control commands published on minique:control.

    Replies have Celery's shapes: {"ok": ...} or {"error": ...} for commands, data for inspection.
    """

    def __init__(self, worker: Any):
        self.worker = worker
        self.client = worker.app.broker_client
        self.stopped = threading.Event()
        self._moved = threading.Event()  # a Sentinel master moved: subscribe again (see resubscribe)
        self.pubsub: Any = None
        self.thread = threading.Thread(target=self._run, name="minique-control", daemon=True)
        self._report = Once(log)  # bad control messages and errors, logged once per kind
        self.handlers: Dict[str, Callable[[Dict[str, Any]], Any]] = {
            "ping": lambda a: {"ok": "pong"},
            "active": self._active,
            "reserved": self._reserved,
            "scheduled": self._scheduled,
            "registered": lambda a: sorted(n for n in worker.app.tasks if not n.startswith("minique.")),
            "stats": self._stats,
            "active_queues": lambda a: [{"name": q} for q in worker.queues],
            "revoked": lambda a: sorted(revoked_ids(self.client.zrangebyscore(keys.REVOKED, time.time(), "+inf"))),
            "revoke": self._revoke,
            "shutdown": lambda a: worker.shutdown("warm") or {"ok": "shutting down"},
            "pool_grow": lambda a: self._resize(+int(a.get("n", 1))),
            "pool_shrink": lambda a: self._resize(-int(a.get("n", 1))),
            "autoscale": self._autoscale,
            "rate_limit": self._rate_limit,
            "queues_changed": lambda a: {"ok": "paused: " + (", ".join(sorted(worker.refresh_paused())) or "none")},
        }

    @property
    def telemetry(self) -> Any:
        return getattr(self.worker, "telemetry", None)

    def start(self) -> None:
        """Subscribe before returning, so a command sent once the worker is ready is never missed."""
        self._subscribe()
        self.thread.start()
        if self.telemetry is not None:
            self.telemetry.serve()
            self.telemetry.online()

    def stop(self) -> None:
        self.stopped.set()
        if self.telemetry is not None:
            self.telemetry.close()

    def resubscribe(self) -> None:
        """The master moved (worker/follow.py): leave the subscription on the old one (within 0.5 s) and
        subscribe on the new one. (Not a connection error: a demoted master keeps its subscribers.)"""
        self._moved.set()

    def _subscribe(self) -> None:
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(keys.CONTROL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            item = self.pubsub.get_message(timeout=0.5)
            if item is not None and item["type"] == "subscribe":
                return
        log.warning("no confirmation of the control channel subscription yet")

    # --- inspection ---------------------------------------------------------------------------------
    def _describe(self, data: Optional[bytes]) -> Dict[str, Any]:
        """id, name, args, kwargs of a message, decoded only as minique.display allows (json or msgpack,
        the signature first when security_key is set, never pickle); args that may not be shown are a
        `<not decoded: why>` note, and values that do not pack into the reply a bounded repr."""
        from ..display import describe_for_display
        from ..events import short_repr
        if not data:
            return {}
        seen = describe_for_display(data, self.worker.app.conf.security_key)
        if seen["name"] is None:  # not a message at all
            return {}
        out: Dict[str, Any] = {key: seen.get(key) for key in ("id", "name", "retries", "eta", "expires", "root_id",
                                                              "parent_id")}
        out["type"] = seen["name"]
        args, kwargs = seen["args"], seen["kwargs"]
        if args is None:
            args, kwargs = f"<not decoded: {seen['problem']}>", None
        else:
            try:
                serializers.pack([args, kwargs])
            except Exception:  # noqa: BLE001 - not msgpack-able here: a repr goes in the reply
                args, kwargs = short_repr(args), short_repr(kwargs)
        out["args"], out["kwargs"] = args, kwargs
        return out

    def _active(self, args: Dict[str, Any]) -> List[Any]:
        pool = self.worker.pool
        out = []
        for m in list(pool.members.values()):
            for started, _, record in pool.slots[m.index].tasks():  # (the asyncio pool's: many per process)
                item = {"id": record.task_id, "name": record.name, "type": record.name, "args": None,
                        "kwargs": None}
                item.update(self._describe(record.data))
                item.update({"hostname": self.worker.hostname, "time_start": started, "worker_pid": m.pid,
                             "acknowledged": not record.acks_late, "delivery_info": {"queue": record.queue}})
                out.append(item)
        return out

    def _reserved(self, args: Dict[str, Any]) -> List[Any]:
        pool = self.worker.pool
        active = {a["id"] for a in self._active({})}
        out = []
        from ..message import peek_id
        for m in list(pool.members.values()):
            for d in self.worker.app.broker.held_by(m.name, self.worker.queues):
                tid = peek_id(d.data)
                if tid in active:
                    continue
                item: Dict[str, Any] = {"id": tid}
                item.update(self._describe(d.data))
                item.update({"hostname": self.worker.hostname, "acknowledged": False,
                             "delivery_info": {"queue": d.queue, "priority": d.priority,
                                               "redelivered": d.deliveries > 0}})
                out.append(item)
        return out

    def _scheduled(self, args: Dict[str, Any]) -> List[Any]:
        """Messages waiting for their ETA in this worker's queues (kept in Redis, shared by the queue's workers)."""
        out = []
        for q in self.worker.queues:
            for member, score in self.client.zrange(keys.delayed(q), 0, 99, withscores=True):
                request = self._describe(member[1:])
                if not request:
                    continue
                request["delivery_info"] = {"queue": q, "priority": int(chr(member[0])) if member[:1].isdigit() else 0}
                entry = {"eta": score / 1000.0, "priority": request["delivery_info"]["priority"], "request": request}
                waiting_for = self._waiting_for(member[1:], score)
                if waiting_for:
                    entry["waiting_for"] = waiting_for
                out.append(entry)
        return out

    def _waiting_for(self, data: bytes, score: float) -> Optional[str]:
        """Why a delayed message waits, when it is not its own ETA: a rate limit's reserved start (the
        header it was parked with), or a concurrency slot (a limited task due before its message's ETA)."""
        from ..message import decode
        from .ratelimit import RESERVED
        try:
            msg = decode(data)
        except Exception:  # noqa: BLE001 - shown as it is by _describe
            return None
        if msg.headers and msg.headers.get(RESERVED) is not None:
            return "its rate limit's reserved start"
        task = self.worker.app.tasks.get(msg.task)
        if task is not None and task.concurrency_limit and (msg.eta is None or msg.eta * 1000 < score - 1):
            return "a concurrency slot"
        return None

    def _stats(self, args: Dict[str, Any]) -> Dict[str, Any]:
        w = self.worker
        out = dict(w.stats())
        out["processed"] = out.get("total", 0)
        tel = self.telemetry
        if tel is not None:
            out["total"] = tel.table.task_totals("received")
            out["rate_limits"] = dict(tel.rates)
            out["metrics_port"] = tel.server.port if tel.server is not None else 0
        out["pool"] = dict(out.get("pool") or {}, processes_alive=len(w.pool.members))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["rusage"] = {"utime": usage.ru_utime, "stime": usage.ru_stime, "maxrss": usage.ru_maxrss}
        out["events"] = bool(w.send_events)
        return out

    # --- commands -----------------------------------------------------------------------------------
    def _revoke(self, args: Dict[str, Any]) -> Dict[str, Any]:
        ids = args.get("task_ids") or []
        ids = [ids] if isinstance(ids, str) else ids
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return {"error": f"task_ids must be a list of task ids, not {ids!r:.100}"}
        sig = str(args.get("signal") or "SIGTERM").upper()
        sig = sig if sig.startswith("SIG") else f"SIG{sig}"
        if sig == "SIGTERM":
            # A pool process takes SIGTERM as "finish the task, then stop" (warm shutdown), so it
            # cannot end the task: terminate with the default signal kills the process instead.
            sig = "SIGKILL"
        self.worker.revoke(ids, bool(args.get("terminate", False)), sig)
        return {"ok": f"tasks {', '.join(ids)} flagged as revoked"}

    def _resize(self, delta: int) -> Dict[str, Any]:
        pool = self.worker.pool
        if getattr(self.worker, "autoscaler", None) is not None:  # (Celery's answer)
            return {"error": f"pool_{'grow' if delta > 0 else 'shrink'} is not supported with autoscale. "
                             f"Adjust autoscale range instead."}
        if delta < 0 and pool.size + delta < 1:
            return {"error": f"cannot shrink the pool below 1 process (size {pool.size})"}
        pool.resize(pool.size + delta)
        self.worker.wake.set()  # the parent's loop spawns, or retires the processes (Pool.maintain)
        return {"ok": f"pool will {'grow' if delta > 0 else 'shrink'}", "size": pool.size}

    def _autoscale(self, args: Dict[str, Any]) -> Dict[str, Any]:
        """Celery's `autoscale [max [min]]`: new bounds for the autoscaler."""
        scaler = getattr(self.worker, "autoscaler", None)
        if scaler is None:
            return {"error": "Autoscale not enabled"}
        from ..autoscale import parse_autoscale
        high = args.get("max") if args.get("max") is not None else scaler.max
        low = args.get("min") if args.get("min") is not None else scaler.min
        try:
            bounds = parse_autoscale([high, low], "autoscale")
        except ValueError as exc:
            return {"error": str(exc)}
        assert bounds is not None
        scaler.max, scaler.min = bounds
        pool = self.worker.pool
        pool.resize(max(scaler.min, min(scaler.max, pool.size)))
        self.worker.wake.set()
        return {"ok": f"autoscale now max={scaler.max} min={scaler.min}"}

    def _rate_limit(self, args: Dict[str, Any]) -> Dict[str, Any]:
        name = args.get("task_name")
        if name not in self.worker.app.tasks:
            return {"error": f"unknown task {name!r}"}
        if self.telemetry is None:
            return {"error": "rate limits are not available in this worker"}
        try:
            rate = self.telemetry.set_rate(name, args.get("rate_limit"))
        except ValueError as exc:
            return {"error": str(exc)}
        return {"ok": "new rate limit set successfully" if rate else "rate limit disabled successfully"}

    # --- loop ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                if self.pubsub is None:
                    self._subscribe()
                while not self.stopped.is_set():
                    if self._moved.is_set():
                        self._moved.clear()
                        self.pubsub.close()  # (its connection is closed)
                        self._subscribe()
                    item = self.pubsub.get_message(timeout=0.5)
                    if item is not None and item["type"] == "message":
                        try:
                            self._handle(item["data"])
                        except redis.exceptions.RedisError:
                            raise
                        except Exception as exc:  # noqa: BLE001 - one command never ends the control thread
                            self._report("control", "control message %.200r could not be handled: %r; "
                                         "skipped", item["data"], exc, exc_info=True)
            except Exception as exc:  # noqa: BLE001 - Redis errors, and any other: the thread goes on
                if isinstance(exc, redis.exceptions.RedisError):
                    log.warning("control channel lost (%s); reconnecting", exc)
                else:
                    self._report("control loop", "control channel loop failed: %r; resubscribing", exc,
                                 exc_info=True)
                try:
                    self.pubsub.close()
                except Exception:  # noqa: BLE001
                    pass
                self.pubsub = None
                self.stopped.wait(0.5)

    def _handle(self, raw: bytes) -> None:
        cmd, problem = parse_command(raw)
        if cmd is None:  # not even whom it is for, or where to answer, is known: skipped
            self._report(("malformed", problem), "malformed control message skipped: %s (%.200r)", problem, raw,
                         level=logging.WARNING)
            return
        dest = cmd.get("dest")
        if dest and self.worker.hostname not in dest:
            return
        name = cmd.get("cmd")
        handler = self.handlers.get(name) if isinstance(name, str) else None
        if problem is not None:
            self._report(("malformed", problem), "malformed control message: %s (%.200r)", problem, raw,
                         level=logging.WARNING)
            answer: Any = {"error": f"malformed control message: {problem}"}
        elif handler is None:
            answer = {"error": f"unknown command {name!r}"}
        else:
            try:
                answer = handler(cmd.get("args") or {})
            except Exception as exc:  # noqa: BLE001 - a bad command must not kill the worker
                self._report(("command", name), "control command %s failed: %r", name, exc, exc_info=True)
                answer = {"error": repr(exc)}
        if cmd.get("reply_to"):
            try:
                packed = serializers.pack({self.worker.hostname: answer})
            except Exception as exc:  # noqa: BLE001 - an answer that does not pack still gets a reply
                packed = serializers.pack({self.worker.hostname: {"error": f"unpackable reply: {exc!r}"}})
            key = keys.reply(cmd["reply_to"])
            pipe = self.client.pipeline(transaction=False)
            pipe.rpush(key, packed)
            pipe.expire(key, 60)
            pipe.execute()


DISPLAYABLE = frozenset({"json", "msgpack"})  # content types decoded for display: decoding them runs no code


def parse_command(raw: Any) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """A control message, `{cmd, args, dest, reply_to}` in msgpack (see minique/control.py), checked:
    (the command, None) when well-formed; (the command, what is wrong) when whom it is for and where
    to answer are known but the rest is wrong (answered with the error); (None, what is wrong) when
    not even those are (skipped)."""
    try:
        cmd = serializers.unpack(raw)
    except Exception as exc:  # noqa: BLE001 - whatever msgpack says, it is not a command
        return None, f"not msgpack ({type(exc).__name__})"
    if not isinstance(cmd, dict):
        return None, f"a msgpack {type(cmd).__name__}, not a map"
    dest, reply_to = cmd.get("dest"), cmd.get("reply_to")
    if isinstance(dest, str):  # one host name
        dest = cmd["dest"] = [dest]
    if dest is not None and not (isinstance(dest, list) and all(isinstance(d, str) for d in dest)):
        return None, f"'dest' is {_type_of(dest)}, not a list of host names"
    if reply_to is not None and not isinstance(reply_to, str):
        return None, f"'reply_to' is {_type_of(reply_to)}, not a string"
    if not isinstance(cmd.get("cmd"), str):
        return cmd, f"'cmd' is {_type_of(cmd.get('cmd'))}, not a string"
    args = cmd.get("args")
    if args is not None and not isinstance(args, dict):
        return cmd, f"'args' is {_type_of(args)}, not a map"
    return cmd, None


def _type_of(value: Any) -> str:
    return "missing" if value is None else type(value).__name__
