"""The worker process: starts the pool, keeps it whole, and does the cluster's upkeep.

Upkeep on timers (never on the task path): moving due delayed messages, renewing the
claims of live children, redelivering what dead workers held (under a short lock),
heartbeats, and remote control. Shutdown: the first SIGTERM/SIGINT is warm (running
tasks finish, unstarted ones go back to the queue), a second one or SIGQUIT is cold.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import redis

from .. import keys, replay, serializers, settle as fate, signals, states
from ..autoscale import Autoscaler, parse_autoscale
from ..config import check_worker_settings, mask_url
from ..exceptions import ConfigurationError, TaskRevokedError, TimeLimitExceeded, WorkerLostError
from ..logs import Once
from ..lua import Scripts
from ..message import new_id, peek_id
from ..pipe import ClientPipe
from ..settle import Outcome
from .consumer import Consumer
from .execute import Executor
from .outbox import Outbox
from .pool import AsyncioPool, Member, Pool, PreforkPool, ThreadPool
from .slots import Running

log = logging.getLogger("minique.worker")
TICK = 0.1  # seconds between looks at the pool
PAUSED_POLL = 2.0  # seconds between reads of the paused queues (in case a control command was missed)
AUTOSCALE_EVERY = 0.5  # seconds between the autoscaler's looks at the backlog (one round trip each)
RETRY_FIRST_DELAY, RETRY_MAX_DELAY = 0.5, 4.0  # seconds between attempts to reach Redis at start-up
SCRIPTS = Scripts(Path(__file__).parent / "main_lua")


def expand_hostname(name: Optional[str]) -> str:
    """Celery's -n forms: %h full host name, %n its first label, %d its domain."""
    host = socket.gethostname()
    name = name or "minique@%h"
    return name.replace("%h", host).replace("%n", host.split(".")[0]).replace(
        "%d", host.partition(".")[2] or host)


class Worker:
    """`minique -A proj worker`: one parent and its pool."""

    def __init__(self, app: Any, queues: Optional[Sequence[str]] = None, concurrency: Optional[int] = None,
                 pool: Optional[str] = None, hostname: Optional[str] = None,
                 prefetch_multiplier: Optional[int] = None, max_tasks_per_child: Optional[int] = None,
                 max_memory_per_child: Optional[int] = None, events: Optional[bool] = None,
                 metrics_port: Optional[int] = None, beat: bool = False, health_port: Optional[int] = None,
                 autoscale: Any = None, fair: bool = False, purge: bool = False,
                 async_concurrency: Optional[int] = None):
        conf = app.conf
        self.app = app
        self.hostname = expand_hostname(hostname)
        if signals.celeryd_init.receivers:  # before the settings are read: a receiver may change them (Celery)
            signals.celeryd_init.send(sender=self.hostname, instance=self, conf=conf, options=dict(
                queues=queues, concurrency=concurrency, pool=pool, hostname=hostname,
                prefetch_multiplier=prefetch_multiplier, max_tasks_per_child=max_tasks_per_child,
                max_memory_per_child=max_memory_per_child, events=events, metrics_port=metrics_port, beat=beat))
        self.queues = ([keys.check_queue(q, "the worker's -Q/--queues") for q in queues] if queues
                       else [keys.check_queue(conf.task_default_queue, "task_default_queue")])
        self.max_tasks = max_tasks_per_child if max_tasks_per_child is not None else conf.worker_max_tasks_per_child
        self.max_memory = max_memory_per_child if max_memory_per_child is not None else conf.worker_max_memory_per_child
        # the command line's value, else the setting's (as Celery); a broken one stops the worker here
        self.concurrency, self.prefetch = check_worker_settings(
            concurrency if concurrency is not None else conf.worker_concurrency,
            prefetch_multiplier if prefetch_multiplier is not None else conf.worker_prefetch_multiplier,
            conf, self.max_tasks, self.max_memory)
        self.pool_kind = pool or conf.worker_pool
        if self.pool_kind not in ("prefork", "threads", "solo", "asyncio"):
            raise ConfigurationError(f"worker_pool must be prefork, threads, solo or asyncio, not {self.pool_kind!r}")
        if self.pool_kind == "solo":
            self.concurrency = 1
        # -P asyncio: tasks at once in each process (its event loop); -c still counts processes
        self.async_concurrency = async_concurrency if async_concurrency is not None else conf.worker_async_concurrency
        if (isinstance(self.async_concurrency, bool) or not isinstance(self.async_concurrency, int)
                or self.async_concurrency < 1):
            raise ConfigurationError(f"worker_async_concurrency (--async-concurrency) must be a number of tasks >= 1, "
                                     f"not {self.async_concurrency!r}")
        # -O fair: a pool process takes a message only when it is free (one at a time, none fetched ahead)
        self.fair = fair
        if fair:
            self.prefetch = 1
        try:
            bounds = parse_autoscale(autoscale if autoscale is not None else conf.worker_autoscale,
                                     "--autoscale" if autoscale is not None else "worker_autoscale")
            keepalive = conf.worker_autoscale_keepalive
            if bounds is not None and (isinstance(keepalive, bool) or not isinstance(keepalive, (int, float))
                                       or keepalive <= 0):
                raise ValueError(f"worker_autoscale_keepalive must be seconds > 0, not {keepalive!r}")
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if bounds is not None and self.pool_kind == "solo":
            raise ConfigurationError("--autoscale needs a pool of several processes (-P prefork or threads), "
                                     "not -P solo")
        self.autoscale = bounds  # (max, min) or None
        self.autoscaler: Optional[Autoscaler] = None
        if bounds is not None:
            self.concurrency = bounds[1]  # as Celery: the pool starts at MIN
        window = conf.worker_early_ack_window
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 <= window < 60:
            raise ConfigurationError(f"worker_early_ack_window must be seconds from 0 to 60 (0: never defer an "
                                     f"early ack), not {window!r}")
        max_age = replay.max_age_of(conf.security_message_max_age)  # (a bad value stops the start here)
        if max_age is not None and max_age < conf.visibility_timeout:
            log.warning("security_message_max_age (%gs) is shorter than visibility_timeout (%gs): a message a dead "
                        "worker held is redelivered stale, and dead-lettered", max_age, conf.visibility_timeout)
        self.send_events = conf.worker_send_task_events if events is None else events
        self.metrics_port = metrics_port if metrics_port is not None else conf.worker_metrics_port
        self.health_port = health_port if health_port is not None else conf.worker_health_port
        self.loop_at = time.monotonic()  # the last turn of the parent's loop (/livez)
        self.embed_beat = beat
        self.purge_first = purge  # --purge: delete the queues' waiting messages before starting
        self.stopping: Optional[str] = None   # None, "warm" or "cold"
        self.paused: FrozenSet[Any] = frozenset()  # this worker's queues that are paused (refresh_paused)
        self._paused_lock = threading.Lock()
        self.wake = threading.Event()
        self.pool: Optional[Pool] = None
        self.started_at = time.time()
        self.child_restarts = 0
        self.parent_executor: Optional[Executor] = None
        self.observer: Any = None
        self.beat: Any = None
        self.telemetry: Any = None  # observe.Telemetry: shared metrics, rate limits, events (set in start)
        self._report = Once(log)     # errors of the parent's loop, logged once per kind
        self._ended: List[Tuple[Any, ...]] = []  # pool processes that ended, not yet settled (see _reap)
        self._unreachable_since: Optional[float] = None  # when the parent's loop last reached Redis no more
        self._scaled_at = 0.0  # when the autoscaler last looked (monotonic)
        self.follow: Any = None  # worker/follow.MasterWatch when the broker or result store is a Sentinel group

    # --- set-up -------------------------------------------------------------------------------------
    def make_consumer(self, name: str, slot: Any) -> Consumer:
        events = self.telemetry.events_for(slot) if self.telemetry is not None else None
        limiter = self.telemetry.limiter_for(slot) if self.telemetry is not None else None
        if self.pool_kind == "asyncio":
            from .eventloop import AsyncConsumer
            return AsyncConsumer(self.app, name, self.queues, self.prefetch, self.hostname, slot=slot, events=events,
                                 max_tasks=self.max_tasks, max_memory_kib=self.max_memory, limiter=limiter,
                                 concurrency=self.async_concurrency, follow=self.follow)
        return Consumer(self.app, name, self.queues, self.prefetch, self.hostname, slot=slot, events=events,
                        max_tasks=self.max_tasks, max_memory_kib=self.max_memory, use_alarm=self.pool_kind == "prefork",
                        limiter=limiter, fetch_ahead=not self.fair, follow=self.follow)

    def start(self) -> None:
        app = self.app
        if signals.worker_init.receivers:
            signals.worker_init.send(sender=self)
        app.import_modules()
        if not self.wait_for_redis():
            return  # stopped while waiting: run() ends without starting the pool
        app.broker.ensure_queues(self.queues)
        if self.purge_first:
            purged = sum(app.broker.purge(q) for q in self.queues)
            log.warning("--purge: deleted %d waiting message(s) from %s", purged, ", ".join(self.queues))
        self.paused = self._paused_now()
        if self.paused:
            log.warning("paused queues (no new messages taken from them): %s", ", ".join(sorted(self.paused)))
        if signals.celeryd_after_setup.receivers:
            signals.celeryd_after_setup.send(sender=self.hostname, instance=self, conf=app.conf)
        most = self.autoscale[0] if self.autoscale else self.concurrency
        if self.pool_kind == "asyncio":  # (a slot has a lane per task at once: not 64 of them when 4 will do)
            self.pool = AsyncioPool(self.make_consumer, self.concurrency, self.hostname, max_size=max(4, most * 4),
                                    lanes=self.async_concurrency)
        else:
            cls = PreforkPool if self.pool_kind == "prefork" else ThreadPool
            self.pool = cls(self.make_consumer, self.concurrency, self.hostname, max_size=max(64, most * 4))
        if self.autoscale:
            self.autoscaler = Autoscaler(self.autoscale[0], self.autoscale[1],
                                         float(app.conf.worker_autoscale_keepalive), time.monotonic())
        # the parent writes the fate of tasks lost with their process through the same executor code
        self.parent_executor = Executor(app, self.hostname, Outbox(app, self.hostname, self.queues, use_alarm=False),
                                        use_alarm=False)
        app.broker.on_dead_letter = self._on_dead_letter
        from .observe import Telemetry
        self.telemetry = Telemetry(self)  # shared memory the pool processes inherit: made before forking
        from .follow import MasterWatch
        self.follow = MasterWatch.of(app)  # (shared memory too; None unless a URL is sentinel://)
        if self.follow is not None:
            self.follow.moved()  # where the masters are now
        if log.isEnabledFor(logging.INFO):
            log.info(self.banner())
        else:  # shown whatever the log level, as Celery's banner is
            print(self.banner(), file=sys.stderr, flush=True)
        if self.pool_kind == "solo" and signals.worker_process_init.receivers:  # (prefork: in each child)
            signals.worker_process_init.send(sender=None)
        self.pool.start()
        try:
            from .observe import Observer
            self.observer = Observer(self)
            self.observer.start()
        except ImportError:
            self.observer = None
        if self.embed_beat:  # -B: a beat inside this worker, for development (Celery's -B)
            from ..beat import Beat
            self.beat = Beat(self.app, hostname=self.hostname)
            if signals.beat_embedded_init.receivers:
                signals.beat_embedded_init.send(sender=self.beat)
            self.beat_thread = threading.Thread(target=self.beat.run, name="minique-beat", daemon=True)
            self.beat_thread.start()
        if signals.worker_ready.receivers:
            signals.worker_ready.send(sender=self)

    def wait_for_redis(self) -> bool:
        """Wait until the broker's Redis (and the result store's) answers, as Celery's worker does with
        `broker_connection_retry_on_startup`: a warning per attempt with its delay, the delay doubling up
        to RETRY_MAX_DELAY, at most `broker_connection_max_retries` attempts (0/None: forever). With
        `broker_connection_retry_on_startup = False`, or once the attempts are spent, or for a password
        Redis refuses, the error is raised (the CLI prints it as one line). False: stopped meanwhile."""
        conf = self.app.conf
        targets = [("broker_url", conf.broker_url)]
        if conf.result_url != conf.broker_url:
            targets.append(("result_backend", conf.result_url))
        retry, limit = conf.broker_connection_retry_on_startup, conf.broker_connection_max_retries
        for setting, url in targets:
            attempt = 0
            while True:
                client = self.app._connect(url, socket_timeout=float(conf.broker_connection_timeout), retries=0)
                try:
                    client.ping()
                    break
                except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError):
                    raise
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                    attempt += 1
                    if not retry:
                        raise
                    if limit and attempt > limit:
                        log.error("Giving up on %s (%s) after %d attempts (broker_connection_max_retries)",
                                  mask_url(url), setting, attempt)
                        raise
                    delay = min(RETRY_FIRST_DELAY * 2 ** min(attempt - 1, 16), RETRY_MAX_DELAY)
                    log.warning("Cannot connect to %s (%s): %s. Trying again in %.2f seconds... (%d/%s)",
                                mask_url(url), setting, str(exc).rstrip("."), delay, attempt, limit or "forever")
                finally:
                    client.close()
                if not self.stopping:
                    self.wake.wait(delay)  # a stop signal sets it
                if self.stopping:
                    return False
            if attempt:
                log.info("Connected to %s (%s) after %d attempt(s)", mask_url(url), setting, attempt + 1)
        return True

    def banner(self) -> str:
        tasks = "\n".join(f"  . {name}" for name in sorted(self.app.tasks) if not name.startswith("minique."))
        scale = f" (autoscale {self.autoscale[1]}..{self.autoscale[0]})" if self.autoscale else ""
        taking = f"prefetch {self.prefetch} per process"
        if self.pool_kind == "asyncio":  # (it takes messages for its free places only: no prefetch multiplier)
            scale += f", {self.async_concurrency} tasks at once per process"
            taking = "messages taken for free places only"
        return (f"minique worker {self.hostname} ready\n"
                f"  broker: {mask_url(self.app.conf.broker_url)}\n  queues: {', '.join(self.queues)}\n"
                f"  pool: {self.pool_kind} x {self.concurrency}{scale}, {taking}"
                f"{' (-O fair)' if self.fair else ''}\n"
                f"  queue type: {self.app.broker.kind}\n[tasks]\n{tasks}")

    # --- signals ------------------------------------------------------------------------------------
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGQUIT, lambda s, f: self.shutdown("cold", "SIGQUIT"))

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self.shutdown("cold" if self.stopping else "warm", signal.Signals(signum).name)

    def shutdown(self, how: str = "warm", sig: Optional[str] = None) -> None:
        if self.stopping == "cold":
            return
        log.warning("%s shutdown (%s)", how.capitalize(), self.hostname)
        if signals.worker_shutting_down.receivers:
            signals.worker_shutting_down.send(sender=self.hostname, sig=sig, how=how.capitalize(), exitcode=0)
        self.stopping = how
        self.wake.set()

    # --- main loop ----------------------------------------------------------------------------------
    def run(self) -> int:
        self.start()
        if self.pool is None:  # stopped while waiting for Redis
            return 0
        timers = {"due": 0.0, "extend": 0.0, "reclaim": 0.0, "heartbeat": 0.0, "paused": 0.0}
        vis = self.app.broker.visibility_timeout
        extend_every = max(0.5, min(vis / 4, 60.0))
        reclaim_every = max(0.5, min(vis / 2, 30.0))
        warm_deadline = None
        while True:
            now = time.time()
            self.loop_at = time.monotonic()  # /livez reads it
            try:
                self._upkeep("reap", self._reap)
                self._upkeep("time limits", self._enforce_time_limits, now)
                if self.stopping is None:
                    if now >= timers["due"]:
                        timers["due"] = now + TICK
                        for queue in self.queues:  # one queue's trouble does not hold up the others
                            moved = self._upkeep(("move_due", queue), self.app.broker.move_due, [queue])
                            if moved is not None and moved[1] is not None:
                                timers["due"] = min(timers["due"], now + max(moved[1] - now, 0.005))
                    if now >= timers["extend"]:
                        timers["extend"] = now + extend_every
                        for m in list(self.pool.members.values()):
                            self._upkeep("extend", self.app.broker.extend, m.name, self.queues)
                    if now >= timers["reclaim"]:
                        timers["reclaim"] = now + reclaim_every
                        self._upkeep("reclaim", self._reclaim)
                    if now >= timers["paused"]:  # (a pause also arrives at once as a control command)
                        timers["paused"] = now + PAUSED_POLL
                        self._upkeep("paused", self.refresh_paused)
                    if now >= timers["heartbeat"]:
                        timers["heartbeat"] = now + float(self.app.conf.worker_heartbeat_interval)
                        if self.follow is not None:
                            self._upkeep("follow", self._follow_master, True)
                        self._upkeep("heartbeat", self.heartbeat)
                    elif self.follow is not None:  # (no I/O: where the parent's own reconnections found it)
                        self._upkeep("follow", self._follow_master, False)
                    if self.autoscaler is not None and time.monotonic() - self._scaled_at >= AUTOSCALE_EVERY:
                        self._upkeep("autoscale", self._autoscale)
                    self._upkeep("refill", self._refill)
                    if self._unreachable_since is not None:  # (only a turn that used Redis can tell)
                        log.warning("Redis reachable again from the worker parent (after %.1fs)",
                                    now - self._unreachable_since)
                        self._unreachable_since = None
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                if self._unreachable_since is None:  # once per outage, not every tick
                    self._unreachable_since = now
                    log.warning("Redis unreachable from the worker parent: %s (retrying every %ss)", exc, TICK)
            if self.stopping == "warm":
                if warm_deadline is None:
                    self.pool.request_stop()
                    limit = self.app.conf.worker_shutdown_timeout
                    warm_deadline = now + float(limit) if limit else float("inf")
                if now > warm_deadline:
                    self.stopping = "cold"
            if self.stopping == "cold":
                self.pool.kill_all()
                if self._ended and self._unreachable_since is not None:
                    # a cold shutdown does not wait for Redis: what the ended processes held stays
                    # pending, and is redelivered after visibility_timeout (as a dead worker's)
                    log.error("Redis unreachable: the messages of %d ended pool process(es) are left for "
                              "redelivery after visibility_timeout", len(self._ended))
                    self._ended.clear()
            if self.stopping and not self.pool.members and not self._ended:
                break
            self.wake.wait(TICK)
            self.wake.clear()
        self._finish()
        return 0

    def _upkeep(self, kind: Any, step: Callable[..., Any], *args: Any) -> Any:
        """One upkeep step of the loop: an error in it is logged (once per kind, see logs.Once) and the
        loop goes on; returns what the step returned, or None when it failed. Redis being unreachable
        is the loop's to handle (every step would fail alike)."""
        try:
            return step(*args)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            raise
        except Exception as exc:  # noqa: BLE001 - one record's or one step's error never ends the worker
            self._report(kind, "worker upkeep %r failed: %r; the worker goes on", kind, exc, exc_info=True)
            return None

    def _refill(self) -> None:
        """Spawn or retire pool processes until the pool has the size wanted (pool_grow/pool_shrink,
        the autoscaler), never reusing the slot of an ended process not yet settled."""
        assert self.pool is not None
        spawned, retired = self.pool.maintain({m.index for m, _, _ in self._ended})
        if retired:
            log.info("pool shrinks to %d: %d process(es) stop after their task", self.pool.size, retired)
        if (spawned or retired) and self.telemetry is not None:
            self.telemetry.publish_rates()

    def _autoscale(self) -> None:
        """--autoscale: size the pool from its busy processes and the messages waiting in its queues."""
        assert self.pool is not None and self.autoscaler is not None
        self._scaled_at = now = time.monotonic()
        members = list(self.pool.members.values())
        busy = sum(1 for m in members if not m.retiring and self.pool.slots[m.index].tasks())
        size = self.pool.size
        serving = [q for q in self.queues if q not in self.paused]  # (a paused queue's messages wait for no one)
        waiting = self.app.broker.waiting(serving) if serving else 0
        wanted = self.autoscaler.decide(now, size, busy, waiting)
        if wanted != size:
            log.info("autoscale: %s the pool from %d to %d process(es) (%d busy, %d waiting)",
                     "growing" if wanted > size else "shrinking", size, wanted, busy, self.autoscaler.demand - busy)
            self.pool.resize(wanted)

    def _reap(self) -> None:
        """Settle what each ended pool process held, one process at a time: an error with one is logged
        and leaves the others to be settled; Redis unreachable leaves the rest for the next turn (before
        their slots are used again: the loop refills only after a turn without that)."""
        assert self.pool is not None
        self._ended.extend(self.pool.reap())
        while self._ended:
            member, how, clean = self._ended[0]
            self._upkeep(("reap", member.name), self._reaped, member, how, clean)
            self._ended.pop(0)

    def _reaped(self, member: Member, how: str, clean: bool) -> None:
        """Settle what an ended pool process held and return its unstarted messages."""
        assert self.pool is not None
        slot = self.pool.slots[member.index]
        running = [record for _, _, record in slot.tasks()]
        lost: List[Tuple[Any, ...]] = [(record, True) for record in running]
        lost += [(record, False) for record in slot.unflushed()]
        self._ack_started(member, [record for record, _ in lost])
        for record, was_running in lost:
            try:
                self._handle_lost(member, record, was_running, how)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                raise
            except Exception:  # noqa: BLE001 - one task's bad record must not stop the worker
                log.exception("could not settle task %s lost with %s", record.task_id, member.name)
        returned = self._release(member.name)
        if not clean or lost:
            self.child_restarts += 1 if not self.stopping else 0
            held = ", ".join(f"{r.name}[{r.task_id}]" for r in running[:3]) + (", ..." if len(running) > 3 else "")
            log.error("pool process %s ended (%s)%s; %d unstarted message(s) returned to the queue",
                      member.name, how, f" while running {held}" if running else "", returned)
        elif returned:
            log.info("pool process %s ended; %d unstarted message(s) returned", member.name, returned)

    def _release(self, consumer: str) -> int:
        returned = self._retrying(lambda: self.app.broker.release(consumer, self.queues))
        if returned is None:
            log.error("could not return messages held by %s; the reaper will after visibility_timeout", consumer)
        return returned or 0

    def _ack_started(self, member: Member, records: List[Running]) -> None:
        """Ack the early-ack tasks a lost process had started: their ack may have been waiting to
        share a write (the Outbox defers them), and they must not run again when the rest is handed back."""
        ids = {r.task_id for r in records if not r.acks_late}
        if not ids:
            return
        app = self.app

        def ack() -> bool:
            held = [d for d in app.broker.held_by(member.name, self.queues) if peek_id(d.data) in ids]
            pipe = ClientPipe(app.broker_client)
            for delivery in held:
                app.broker.ack(pipe, delivery)
            pipe.execute()
            if held:
                log.warning("acked %d task(s) that %s had started (their acks were waiting to share a write)",
                            len(held), member.name)
            return True

        if self._retrying(ack) is None:
            log.error("could not ack the tasks %s had started; they may run again", member.name)

    def _retrying(self, call: Any) -> Any:
        """call() until Redis answers, for 5 s (a call itself may take its client's retries longer); None if
        it never did. In a cold shutdown, one call: the worker stops now, whatever Redis does."""
        if self.stopping == "cold" and self._unreachable_since is not None:
            return None
        deadline = time.monotonic() + 5.0
        while True:
            try:
                return call()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                if self.stopping == "cold" or time.monotonic() >= deadline:
                    if self._unreachable_since is None:
                        self._unreachable_since = time.time()
                    return None
                time.sleep(0.1)

    def _handle_lost(self, member: Member, record: Running, was_running: bool, how: str) -> None:
        """A pool process ended holding a task: settle() says whether it is redelivered or failed."""
        app = self.app
        if not was_running:
            meta = app.backend.get_meta(record.task_id)
            if meta["status"] in states.READY_STATES or record.ignore_result:
                return  # its writes made it; the ack (if late) went with them
        assert self.pool is not None and self.parent_executor is not None
        name, task_id = record.name, record.task_id
        # revoke(terminate=True): only when the process died running the very task it was aimed at
        if member.kill_reason == "time limit" and task_id in member.overdue:
            outcome = Outcome(fate.TIME_LIMIT, TimeLimitExceeded(f"Task {name}[{task_id}] time limit exceeded"))
        elif (was_running and member.kill_reason == "terminate"
              and self.pool.slots[member.index].terminate_target() == task_id):
            outcome = Outcome(fate.TERMINATED, TaskRevokedError("terminated"))
        elif self.stopping == "cold":
            outcome = Outcome(fate.SHUTDOWN, WorkerLostError(f"Worker stopped (cold shutdown). Task {name}[{task_id}]"))
        else:
            outcome = Outcome(fate.WORKER_LOST, WorkerLostError(f"Worker exited prematurely: {how}. "
                                                                f"Task {name}[{task_id}]"))
        delivery = None
        if record.acks_late:
            delivery = next((d for d in app.broker.held_by(member.name, [record.queue])
                             if peek_id(d.data) == task_id), None)
        executor = self.parent_executor
        try:
            settlement = executor.settle_lost(outcome, task_id, name, record.data, delivery, record.ignore_result)
            executor.outbox.flush()
        except Exception:
            executor.outbox.discard()
            raise
        if settlement.requeue:
            log.warning("Task %s[%s] %s: redelivered (acks_late)", name, task_id, outcome.kind)
            return
        state = settlement.state or states.FAILURE
        if self.telemetry is not None:
            self.telemetry.lost(name, task_id, record.queue, state, outcome.value, record.data)
        log.error("Task %s[%s] %s: %s", name, task_id, state, outcome.value)

    def _on_dead_letter(self, task_id: Optional[str], reason: str) -> None:
        """The broker dead-lettered a message it redelivered too often, or a malformed record: its task
        will not run, so it gets a final state (else a caller waiting on its result would wait forever);
        as the executor does, not for a malformed record when security_key is set (its id is unverified)."""
        from ..exceptions import DecodeError
        malformed = reason.startswith("malformed record")
        if not task_id or (malformed and self.app.conf.security_key):
            return
        if self.app.backend.get_meta(task_id)["status"] in states.READY_STATES:
            return
        exc: Exception = (DecodeError(f"dead-lettered: {reason}") if malformed else
                          WorkerLostError(f"Task {task_id} dead-lettered: {reason} "
                                          f"(max deliveries {self.app.broker.max_deliveries})"))
        self.app.backend.mark(task_id, states.FAILURE, exc)

    def _enforce_time_limits(self, now: float) -> None:
        assert self.pool is not None
        if not self.pool.hard_time_limits:
            return
        grace = self.pool.hard_grace
        for member in list(self.pool.members.values()):
            slot = self.pool.slots[member.index]
            if member.kill_reason is not None or slot.lanes is not None and not slot.lanes.hard_limited():
                continue
            over = [record for started, hard, record in slot.tasks()
                    if started and hard and now - started > hard + grace]
            if over:
                log.error("Task %s[%s] hit its hard time limit: killing %s", over[0].name, over[0].task_id, member.name)
                member.overdue = frozenset(record.task_id for record in over)
                self.pool.kill(member, signal.SIGKILL, "time limit")

    def _reclaim(self) -> None:
        """Redeliver what dead workers held; one worker at a time does it (short lock)."""
        lock, token = keys.lock("reaper"), f"{self.hostname} {new_id()}"
        if self.app.broker_client.set(lock, token, nx=True, px=5000):
            try:
                n = self.app.broker.reclaim(self.queues)
                if n:
                    log.warning("redelivered %d message(s) held by workers that stopped answering", n)
            finally:  # only our own lock: if it expired meanwhile, another reaper may hold it now
                SCRIPTS(self.app.broker_client, "unlock", [lock], [token])

    # --- control hooks (used by the control module) -------------------------------------------------
    def refresh_paused(self) -> FrozenSet[Any]:
        """Read the paused queues; when they changed, tell the pool processes (they re-read them). Called by
        the main loop and by the control thread: the lock makes a control command's answer wait until the
        pool has been told, whichever of the two noticed the change first."""
        with self._paused_lock:
            paused = self._paused_now()
            if paused != self.paused:
                if paused:
                    log.warning("paused queues (no new messages taken from them): %s", ", ".join(sorted(paused)))
                else:
                    log.warning("no queue of this worker is paused now")
                self._tell_pool(wake=True)
                self.paused = paused
            return paused

    def _paused_now(self) -> FrozenSet[str]:
        return frozenset(self.app.control.paused()) & set(self.queues)

    def _tell_pool(self, wake: bool = False) -> None:
        """Bump every pool slot's control number: its process re-reads revocations and paused queues.
        `wake`: also end a blocking wait (SIGUSR2), so a process does not take from a queue just paused."""
        assert self.pool is not None
        for m in list(self.pool.members.values()):  # (may run in the control thread: copy the members)
            self.pool.slots[m.index].bump_ctl()
            if m.consumer is not None:
                m.consumer.reload_control()
            elif wake and m.pid:
                try:
                    os.kill(m.pid, signal.SIGUSR2)
                except ProcessLookupError:
                    pass

    def _follow_master(self, ask: bool) -> None:
        """Sentinel: where the master is (`ask`: the sentinels are asked, each heartbeat); when it moved,
        every connection leaves the old one now: this process's (the control channel subscribes again)
        and the pool's (told through the control number, woken from a blocking read). worker/follow.py."""
        assert self.follow is not None
        news = self.follow.moved(ask)
        if not news:
            return
        log.warning("Sentinel: %s; the worker's connections follow", "; ".join(news))
        if self.parent_executor is not None:
            self.parent_executor.outbox.reconnect()
        if self.observer is not None:
            self.observer.resubscribe()
        self._tell_pool(wake=True)

    def revoke(self, task_ids: List[str], terminate: bool = False, sig: str = "SIGTERM") -> None:
        """Tell the pool about new revocations (they are already in Redis) and terminate if asked."""
        assert self.pool is not None
        if terminate and self.pool.kind == "asyncio":  # the task is cancelled, not its process: its lane names it
            wanted = set(task_ids)
            for m in list(self.pool.members.values()):
                lanes = self.pool.slots[m.index].lanes
                for task_id in wanted:
                    lane = lanes.lane_running(task_id) if lanes is not None else None
                    if lanes is not None and lane is not None:
                        lanes.set_terminate(lane, task_id)
            self._tell_pool(wake=True)
            return
        self._tell_pool()
        if terminate and self.pool.hard_time_limits:
            wanted = set(task_ids)
            for m in list(self.pool.members.values()):
                _, _, record = self.pool.slots[m.index].running()
                if record and record.task_id in wanted:
                    # name the task first: the child dies of the signal only while it still runs that task
                    self.pool.slots[m.index].set_terminate(record.task_id)
                    self.pool.kill(m, getattr(signal, sig, signal.SIGTERM), "terminate")

    def active(self) -> List[Dict[str, Any]]:
        assert self.pool is not None
        out = []
        for m in self.pool.members.values():
            for started, _, record in self.pool.slots[m.index].tasks():
                out.append({"id": record.task_id, "name": record.name, "time_start": started, "worker_pid": m.pid,
                            "hostname": self.hostname, "delivery_info": {"queue": record.queue}})
        return out

    def stats(self) -> Dict[str, Any]:
        assert self.pool is not None
        out = {"hostname": self.hostname, "pid": os.getpid(), "pool": {"implementation": self.pool.kind,
                "max-concurrency": self.pool.size, "processes": [m.pid for m in self.pool.members.values()],
                **({"async-concurrency": self.async_concurrency} if self.pool.kind == "asyncio" else {})},
                "total": sum(self.pool.slots[i].total for i in range(self.pool.slots.n)),
                "uptime": time.time() - self.started_at, "child_restarts": self.child_restarts,
                "prefetch_count": (self.async_concurrency if self.pool.kind == "asyncio" else self.prefetch)
                * self.pool.size, "queues": self.queues}
        if self.autoscaler is not None:
            out["autoscaler"] = self.autoscaler.info(self.pool.size)
        return out

    def heartbeat(self) -> None:
        size = self.pool.size if self.pool else self.concurrency
        info = {"hostname": self.hostname, "ts": time.time(), "pid": os.getpid(), "queues": self.queues,
                "concurrency": size,  # (pool processes; places: tasks it may run at once, more in the asyncio pool)
                "places": size * (self.async_concurrency if self.pool_kind == "asyncio" else 1),
                "processed": self.stats()["total"], "active": len(self.active()),
                "started": self.started_at, "pool": self.pool_kind}
        self.app.broker_client.hset(keys.WORKERS, self.hostname, serializers.pack(info))
        if self.telemetry is not None:
            self.telemetry.heartbeat(info)

    def _finish(self) -> None:
        if self._unreachable_since is not None:  # (Telemetry.close skips the goodbye then)
            log.warning("Redis unreachable: worker %s stops without its worker-offline event", self.hostname)
        if self.observer is not None:
            self.observer.stop()
        if self.beat is not None:
            self.beat.stop()
            self.beat_thread.join(timeout=5)
        try:
            if self._unreachable_since is None:
                self.app.broker_client.hdel(keys.WORKERS, self.hostname)
        except redis.exceptions.RedisError:
            pass
        log.info("worker %s stopped", self.hostname)
        if signals.worker_shutdown.receivers:
            signals.worker_shutdown.send(sender=self)

