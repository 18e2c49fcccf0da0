"""Runs one delivered message and records what happened: the heart of the worker.

`Executor.handle()` turns a Delivery into exactly one of: done (result stored,
follow-ups sent), retried (a new message with retries+1 and an ETA), failed
(FAILURE stored, errbacks sent, chain and chord told), revoked/expired, or
dead-lettered with its reason. Every command goes into a Batch, written before the
next task runs and confirmed when the consumer next reads from Redis, so a task
costs no wait of its own in the steady state; between short tasks of one prefetched
batch even the write waits (Batch.defer), so a batch of them costs one write.
"""
from __future__ import annotations

import inspect
import logging
import os
import signal
import time
from typing import Any, Callable, Dict, List, Optional

import redis

from .. import canvas, context, retry as retry_engine, states
from ..signing import verify
from ..backend import format_traceback
from ..brokers import Delivery
from ..exceptions import (ChordError, ContentDisallowed, DecodeError, Ignore, NotRegistered, Reject, Retry,
                          SoftTimeLimitExceeded, TaskRevokedError)
from ..message import Message, decode, peek_id

log = logging.getLogger("minique.worker")


_ON_REPLY = "minique_on_reply"


def _pack_py(args: tuple) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        t = type(a)
        b = a if t is bytes else a.encode() if t is str else b"%d" % a if t is int else repr(float(a)).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


try:  # packing is a fifth of a pool process's Python time: hiredis's packer is 4x cheaper than redis-py's
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - without the hiredis extra
    _pack = _pack_py


class FastPipeline(redis.client.Pipeline):
    """A pipeline that keeps one connection checked out and can write now and read the replies later.

    The worker writes one of these before each task and reads the replies when it next has to wait
    for Redis anyway (the fetch at the end of a prefetched batch), so a task costs no round trip of
    its own. Commands stay owned by the pipeline until their replies are read: on a connection
    failure they are written again, so nothing written is lost (results, acks and event batches are
    idempotent; a follow-up message may then be sent twice, never lost)."""

    MAX_UNREAD = 512  # commands written and not yet answered before a write reads the backlog first

    def __init__(self, client: "redis.Redis"):
        super().__init__(client.connection_pool, client.response_callbacks, False, None)
        self._conn: Any = None
        self._unread: list = []  # commands written whose replies are still on the socket
        self._gathered: Dict[tuple, list] = {}  # (emit, key) -> items, see gather

    def gather(self, emit: Callable[[Any, list], List[tuple]], key: Any, item: Any) -> None:
        """Queue `item` to leave with the others of the same (emit, key) in few commands: at the next
        write, emit(key, items) gives them (one XACK for every message a write acks on a stream)."""
        items = self._gathered.get((emit, key))
        if items is None:
            self._gathered[(emit, key)] = [item]
        else:
            items.append(item)

    def call(self, on_reply: Callable[[Any], None], *args: Any) -> None:
        """Queue a command whose reply (or error) is handed to `on_reply` when it is read; `on_reply`
        may queue more commands (they go with the next write), never wait for Redis itself."""
        self.command_stack.append((args, {_ON_REPLY: on_reply}))

    def write(self) -> None:
        """Send the queued commands without waiting for their replies."""
        if len(self._unread) >= self.MAX_UNREAD:
            self.collect()
        if self._gathered:  # last: after the results and follow-ups queued with them
            gathered, self._gathered = self._gathered, {}
            self.command_stack.extend((args, {}) for (emit, key), items in gathered.items()
                                      for args in emit(key, items))
        stack, self.command_stack = self.command_stack, []
        if not stack:
            return
        conn = self._conn
        if conn is None:
            conn = self._conn = self.connection_pool.get_connection()
        try:
            try:
                packed = [b"".join([_pack(args) for args, _ in stack])]
            except TypeError:  # an argument type only redis-py's encoder knows
                packed = conn.pack_commands([args for args, _ in stack])
            conn.send_packed_command(packed)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            self._lost(conn, stack)
            raise
        self._unread.extend(stack)

    def collect(self, raise_on_error: bool = True) -> list:
        """Read the replies of every command written so far."""
        unread, self._unread = self._unread, []
        if not unread:
            return []
        conn = self._conn
        out: list = []
        try:
            for _ in unread:
                try:
                    out.append(conn.read_response())
                except redis.exceptions.ResponseError as exc:
                    out.append(exc)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            self._lost(conn, unread)
            raise
        error = None
        for (_, options), reply in zip(unread, out):
            on_reply = options.get(_ON_REPLY)
            try:
                if on_reply is not None:
                    on_reply(reply)
                elif isinstance(reply, Exception):
                    raise reply
            except Exception as exc:  # every handler runs; the first error is raised after them
                error = error or exc
        if error is not None and raise_on_error:
            raise error
        return out

    def execute(self, raise_on_error: bool = True) -> list:
        """Write the queued commands and read the replies of everything written so far, in order."""
        self.write()
        return self.collect(raise_on_error)

    def _lost(self, conn: Any, commands: list) -> None:
        # which of them Redis ran is unknown: keep all of them (and the unread ones) to write again
        conn.disconnect()
        self.command_stack = self._unread + commands + self.command_stack
        self._unread = []

    def reset(self) -> None:
        self.command_stack = []
        self._gathered = {}

    def __len__(self) -> int:
        return len(self.command_stack) + len(self._gathered)


class Batch:
    """Commands for the broker and the result store, written together: one write per server."""

    def __init__(self, broker_client: Any, backend_client: Any, slot: Any = None):
        self.broker = FastPipeline(broker_client)
        self.backend = self.broker if backend_client is broker_client else FastPipeline(backend_client)
        self.slot = slot
        self.deferred_at: Optional[float] = None  # when a write was first left for later (defer)

    def defer(self, window: float) -> bool:
        """Leave what is queued (the next task's early ack, the last tasks' results) for the next
        write, if the first such deferral is under `window` seconds old. Arms SIGALRM for that
        moment: the executor's handler writes the batch if a task is still running then, so an ack
        is never more than `window` late, however long the task. False: write now."""
        now = time.monotonic()
        if self.deferred_at is None:
            self.deferred_at = now
            signal.setitimer(signal.ITIMER_REAL, window)
            return True
        return now - self.deferred_at < window

    def write(self) -> None:
        """Send what is queued; replies are read at the next flush (or fetch)."""
        self.settle_results()
        self.broker.write()
        self.sent()

    def sent(self) -> None:
        """Everything queued has been written: the finished tasks are flushed, nothing is deferred."""
        if self.deferred_at is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.deferred_at = None
        if self.slot is not None:
            self.slot.flushed()

    def settle_results(self) -> None:
        """Results first: an ack must never reach Redis before the result it stands for. On one
        connection Redis runs commands in order; across two, the results must be answered first."""
        if self.backend is not self.broker:
            self.backend.execute()

    def flush(self) -> None:
        """Send what is queued and wait until Redis has answered everything sent so far (and what
        handling those replies queued: a chord's callback)."""
        while True:
            self.settle_results()
            self.broker.execute()
            if not len(self.broker) and not len(self.backend):
                break
        self.sent()

    def discard(self) -> None:
        self.broker.reset()
        if self.backend is not self.broker:
            self.backend.reset()


class NotStarted(Exception):
    """Redis failed the flush that comes before a task's body: the task did not start.

    The consumer keeps the delivery and handles it again once Redis answers."""


def _fields(msg: Message, event: str, **more: Any) -> Dict[str, Any]:
    """Structured fields of a task log line (the JSON log format prints them)."""
    return {"task_id": msg.id, "task_name": msg.task, "event": event, "queue": msg.queue, **more}


class Executor:
    """Executes deliveries for one consumer (one pool slot)."""

    def __init__(self, app: Any, hostname: str, slot: Any = None, events: Any = None, use_alarm: bool = True,
                 limiter: Any = None):
        self.app = app
        self.conf = app.conf
        self.broker = app.broker
        self.backend = app.backend
        self.accept = app.accept
        self.hostname = hostname
        self.slot = slot
        self.events = events
        self.limiter = limiter  # ratelimit.RateLimiter, or None: no rate limits
        self.revoked: set = set()
        self.max_size = int(self.conf.task_max_message_size or 0)
        self.security_key = self.conf.security_key
        self.ack_window = float(self.conf.worker_early_ack_window or 0) if use_alarm else 0.0
        self.use_alarm = use_alarm
        self._signatures: Dict[str, inspect.Signature] = {}
        self._options: Dict[str, tuple] = {}  # per task name, see _task_options
        self._options_version = -1
        self.last_runtime = float("inf")  # seconds the last task body took (none yet: unknown, long)
        self._soft_armed = False   # SIGALRM now means the running task's soft time limit
        self._running_in: Optional[Batch] = None  # the batch of the task whose body runs now
        self._slot_room = True     # the slot can record one more finished, unflushed task
        if use_alarm:
            signal.signal(signal.SIGALRM, self._on_alarm)

    def _on_alarm(self, signum: int, frame: Any) -> None:
        """SIGALRM: the running task's soft time limit, or the end of a deferral (Batch.defer)."""
        if self._soft_armed:
            raise SoftTimeLimitExceeded()
        batch = self._running_in
        if batch is not None and batch.deferred_at is not None:
            try:  # a task body runs: the batch's connection is not in use
                batch.write()
            except Exception as exc:  # noqa: BLE001 - kept and written again with the next write
                log.warning("could not write deferred acks while a task runs: %s", exc)

    # --- entry point --------------------------------------------------------------------------------
    def handle(self, delivery: Delivery, batch: Batch, defer: bool = False) -> None:
        """Process one delivery; everything it writes goes into `batch`. `defer`: the consumer
        holds more messages and the last task was short, so the pre-run write may wait (Batch.defer)."""
        data = delivery.data
        if self.max_size and len(data) > self.max_size:
            return self._dead_unread(delivery, batch, f"message of {len(data)} bytes is over task_max_message_size "
                                                      f"({self.max_size})")
        try:
            msg = decode(data)
        except DecodeError as exc:
            return self._dead_unread(delivery, batch, f"undecodable message: {exc}")
        if self.security_key and not verify(msg, self.security_key):
            return self._dead(delivery, batch, "unsigned or forged message (security_key is set)", msg.id)
        task = self.app.tasks.get(msg.task)
        if task is None:
            exc = NotRegistered(f"Received unregistered task of type {msg.task!r}: is its module in include=?")
            self.backend.store(batch.backend, msg.id, states.FAILURE, exc)
            return self._dead(delivery, batch, f"unknown task {msg.task!r}", msg.id)
        if msg.id in self.revoked:
            return self._finish_unrun(delivery, msg, batch, "revoked")
        now = time.time()
        if msg.expires is not None and now > msg.expires:
            return self._finish_unrun(delivery, msg, batch, "expired")
        if msg.eta is not None and msg.eta > now + 0.001:
            self.app.publish(batch.broker, msg)  # early (a clock step): park it again
            self.broker.ack(batch.broker, delivery)
            return None
        try:
            args, kwargs = msg.args_kwargs(self.accept)
        except (ContentDisallowed, DecodeError) as exc:
            self.backend.store(batch.backend, msg.id, states.FAILURE, exc)
            return self._dead(delivery, batch, str(exc), msg.id)
        if self.events is not None:
            self.events.received(msg, data)
        if self.limiter is not None:  # the task's rate limit, if any, waits here (after flushing `batch`)
            self.limiter.acquire(msg.task, batch, self.events.received_now if self.events is not None else None)
        self._run(task, delivery, msg, args, kwargs, batch, defer)
        return None

    # --- running ------------------------------------------------------------------------------------
    def _run(self, task: Any, delivery: Delivery, msg: Message, args: list, kwargs: dict, batch: Batch,
             defer: bool = False) -> None:
        acks_late, soft, hard, track = self._task_options(task)
        soft = msg.soft_time_limit or soft
        hard = msg.time_limit or hard
        if self.slot is not None:
            self.slot.begin(msg, delivery, hard or 0.0, acks_late)
        if not acks_late:
            self.broker.ack(batch.broker, delivery)
        if track and not msg.ignore_result:
            self.backend.store(batch.backend, msg.id, states.STARTED, None,
                               extra={"hostname": self.hostname, "pid": os.getpid()})
        if self.events is not None:
            self.events.started(msg, args, kwargs)
            self.events.before_run(batch.broker)
        # Deferred only without a soft time limit (SIGALRM is then the limit's) and while the slot
        # can record the task, so a lost process's parent still acks it (Worker._ack_started).
        if not (defer and self.ack_window > 0 and not soft and self._slot_room and batch.defer(self.ack_window)):
            try:
                batch.write()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                raise NotStarted(str(exc)) from exc
        context.push(lambda: self._request(delivery, msg, args, kwargs, hard, soft))  # built if asked for
        started = time.monotonic()
        if soft and self.use_alarm:
            self._soft_armed = True
            signal.setitimer(signal.ITIMER_REAL, soft)
        self._running_in = batch
        try:
            value = task.run(task, *args, **kwargs) if task.bind else task.run(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - every outcome is recorded, none escapes
            self._running_in = None
            self.last_runtime = time.monotonic() - started
            if soft and self.use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                self._soft_armed = False
            context.pop()
            if self.slot is not None:
                self._slot_room = self.slot.end()
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self._on_exception(task, delivery, msg, args, kwargs, exc, batch, acks_late)
        else:
            self._running_in = None
            runtime = self.last_runtime = time.monotonic() - started
            if soft and self.use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                self._soft_armed = False
            context.pop()
            if self.slot is not None:
                self._slot_room = self.slot.end()
            self._on_success(task, msg, value, batch, runtime)
            if acks_late:
                self.broker.ack(batch.broker, delivery)

    def _task_options(self, task: Any) -> tuple:
        """(acks_late, soft_time_limit, time_limit, track_started) of a task under the settings: read
        once per task (the settings' lookups cost more than a no-op task's body)."""
        conf = self.conf
        if self._options_version == conf.version:
            options = self._options.get(task.name)
            if options is not None:
                return options
        else:
            self._options.clear()
            self._options_version = conf.version
        options = self._options[task.name] = (
            conf.task_acks_late if task.acks_late is None else task.acks_late,
            task.soft_time_limit or conf.task_soft_time_limit,
            task.time_limit or conf.task_time_limit,
            conf.task_track_started if task.track_started is None else task.track_started)
        return options

    def _request(self, delivery: Delivery, msg: Message, args: list, kwargs: dict, hard: Optional[float],
                 soft: Optional[float]) -> context.Request:
        return context.Request(
            id=msg.id, task=msg.task, args=args, kwargs=kwargs, retries=msg.retries, root_id=msg.root_id,
            parent_id=msg.parent_id, group=msg.group_id, group_index=msg.group_index, hostname=self.hostname,
            delivery_info={"queue": delivery.queue, "priority": delivery.priority, "redelivered": delivery.deliveries > 0},
            eta=msg.eta, expires=msg.expires, headers=msg.headers, chord=msg.chord, chain=msg.chain,
            callbacks=msg.links, errbacks=msg.errbacks, message=msg, ignore_result=msg.ignore_result,
            time_limit=hard, soft_time_limit=soft, delivery_count=delivery.deliveries, is_eager=False)

    # --- outcomes -----------------------------------------------------------------------------------
    def _on_success(self, task: Any, msg: Message, value: Any, batch: Batch, runtime: float) -> None:
        serializer = task.serializer
        if not msg.ignore_result:
            self.backend.store(batch.backend, msg.id, states.SUCCESS, value, serializer=serializer)
        if self.events is not None:
            self.events.succeeded(msg, runtime)
        if log.isEnabledFor(logging.INFO):
            log.info("Task %s[%s] succeeded in %.6fs", msg.task, msg.id, runtime,
                     extra=_fields(msg, "succeeded", runtime=runtime))
        if msg.links or msg.chain:
            self.app.send_calls(canvas.success_calls(self.app, msg.id, msg.root_id, msg.links, msg.chain, value),
                                batch.broker)
        if msg.chord:
            self._chord_member_done(msg, value, serializer, batch)

    def _chord_member_done(self, msg: Message, value: Any, serializer: Optional[str], batch: Batch) -> None:
        info = msg.chord

        def complete(results: list) -> None:  # called once per chord, when the last member's join is read
            callback = canvas.from_dict(info["cb"], self.app)
            follow = {"parent_id": msg.id, "root_id": msg.root_id or msg.id}
            self.app.send_calls(callback.plan((results,), None, follow), batch.broker)
            self.backend.chord_sent(batch.backend, info["id"])

        self.backend.chord_join(batch.backend, info["id"], msg.group_index or 0, info["n"], value, serializer,
                                complete)

    def _on_exception(self, task: Any, delivery: Delivery, msg: Message, args: list, kwargs: dict,
                      exc: BaseException, batch: Batch, acks_late: bool) -> None:
        if isinstance(exc, canvas.Replace):
            self._replace(msg, exc.sig, batch)
        elif isinstance(exc, Retry):
            self._retry(task, msg, exc, batch)
        elif isinstance(exc, Reject):
            self._reject(delivery, msg, exc, batch)
            return  # _reject acks
        elif isinstance(exc, Ignore):
            pass
        elif isinstance(exc, TypeError) and not self._args_fit(task, args, kwargs):
            self._fail(task, msg, TypeError(f"{msg.task}() called with wrong arguments: {exc}"), batch, None)
        elif task.autoretry_for and isinstance(exc, task.autoretry_for) and \
                retry_engine.can_retry(task.policy, msg.retries, *self._retry_kwargs_max(task)):
            countdown = (task.retry_kwargs or {}).get("countdown")
            when = retry_engine.retry_at(time.time(), task.policy, msg.retries, countdown)
            self._retry(task, msg, Retry(exc=exc, when=when), batch)
        else:
            self._fail(task, msg, exc, batch, format_traceback(exc))
        if acks_late and (self.conf.task_acks_on_failure_or_timeout or isinstance(exc, (Retry, canvas.Replace))):
            self.broker.ack(batch.broker, delivery)
        elif acks_late:
            self.broker.requeue(delivery, redelivered=True)

    @staticmethod
    def _retry_kwargs_max(task: Any) -> tuple:
        rk = task.retry_kwargs or {}
        return (rk["max_retries"], True) if "max_retries" in rk else (None, False)

    def _args_fit(self, task: Any, args: list, kwargs: dict) -> bool:
        sig = self._signatures.get(task.name)
        if sig is None:
            sig = self._signatures[task.name] = inspect.signature(task.run)
        try:
            sig.bind(*(([task] if task.bind else []) + list(args)), **kwargs)
            return True
        except TypeError:
            return False

    def _retry(self, task: Any, msg: Message, exc: Retry, batch: Batch) -> None:
        changes: Dict[str, Any] = {"retries": msg.retries + 1, "eta": exc.when}
        new_args = getattr(exc, "args_override", None)
        new_kwargs = getattr(exc, "kwargs_override", None)
        if new_args is not None or new_kwargs is not None:
            old_args, old_kwargs = msg.args_kwargs(self.accept)
            from .. import serializers
            changes["body"] = serializers.dumps([list(new_args if new_args is not None else old_args),
                                                 new_kwargs if new_kwargs is not None else old_kwargs],
                                                msg.content_type)
        new = msg._replace(signature=None, **changes)
        if self.security_key:
            from ..signing import sign
            new = sign(new, self.security_key)
        self.app.publish(batch.broker, new)
        if not msg.ignore_result:
            self.backend.store(batch.backend, msg.id, states.RETRY, exc.exc if exc.exc is not None else exc,
                               format_traceback(exc.exc) if exc.exc is not None else None)
        if self.events is not None:
            self.events.task("task-retried", msg, exception=repr(exc.exc))
        log.info("Task %s[%s] retry %d %s: %r", msg.task, msg.id, msg.retries + 1, exc.humanize(), exc.exc,
                 extra=_fields(msg, "retried"))

    def _reject(self, delivery: Delivery, msg: Message, exc: Reject, batch: Batch) -> None:
        if exc.requeue:
            self.broker.send(batch.broker, msg.queue, msg.priority, delivery.data)
        else:
            self.broker.dead_letter(batch.broker, delivery.data, f"rejected by the task: {exc.reason}",
                                    delivery.queue, msg.id, self.hostname)
            self.backend.store(batch.backend, msg.id, states.REJECTED, exc)
        self.broker.ack(batch.broker, delivery)
        if self.events is not None:
            self.events.task("task-rejected", msg, reason=f"rejected by the task: {exc.reason}",
                             requeue=bool(exc.requeue), dead=not exc.requeue)

    def _replace(self, msg: Message, sig: Any, batch: Batch) -> None:
        sig = canvas.from_dict(sig, self.app)
        if isinstance(sig, canvas.group):
            sig = canvas.chord(sig, self.app.tasks["minique.identity"].s(), app=self.app)
        own: Dict[str, Any] = {"task_id": msg.id, "root_id": msg.root_id}
        for key, value in (("chain", msg.chain), ("chord", msg.chord), ("group_id", msg.group_id),
                           ("group_index", msg.group_index), ("link", msg.links), ("link_error", msg.errbacks)):
            if value is not None:
                own[key] = value
        self.app.send_calls(sig.plan((), None, own), batch.broker)

    def _fail(self, task: Any, msg: Message, exc: BaseException, batch: Batch, tb: Optional[str]) -> None:
        store_errors = task.store_errors_even_if_ignored
        if store_errors is None:
            store_errors = self.conf.task_store_errors_even_if_ignored
        if not msg.ignore_result or store_errors:
            self.backend.store(batch.backend, msg.id, states.FAILURE, exc, tb)
        if self.events is not None:
            self.events.task("task-failed", msg, exception=repr(exc))
        log.error("Task %s[%s] raised %r", msg.task, msg.id, exc, extra=_fields(msg, "failed"))
        self.propagate_failure(msg, exc, tb, batch)

    def propagate_failure(self, msg: Message, exc: BaseException, tb: Optional[str], batch: Batch) -> None:
        """What a failure means downstream: errbacks run, later chain steps and the chord callback fail."""
        down = canvas.failure_downstream(self.app, msg.id, msg.errbacks, msg.chain, msg.chord)
        self._fail_downstream(down, exc, tb, batch)

    def _fail_downstream(self, down: canvas.Downstream, exc: BaseException, tb: Optional[str], batch: Batch) -> None:
        for task_id in down.failed_ids:
            self.backend.store(batch.backend, task_id, states.FAILURE, exc, tb)
        self.app.send_calls(down.errbacks, batch.broker)
        for chord_id, member_id, callback in down.chords:
            if self.backend.chord_fail(chord_id):  # this failure ends the chord: its callback will never run
                error = ChordError(f"Dependency {member_id} raised {exc!r}")
                self._fail_downstream(canvas.abandoned(self.app, callback), error, None, batch)

    def _finish_unrun(self, delivery: Delivery, msg: Message, batch: Batch, reason: str) -> None:
        """A message that must not run (revoked or expired): ack it, record REVOKED with the reason."""
        self.broker.ack(batch.broker, delivery)
        self.backend.store(batch.backend, msg.id, states.REVOKED, TaskRevokedError(reason), extra={"reason": reason})
        if self.events is not None:
            self.events.task("task-revoked", msg, reason=reason)
        log.info("Task %s[%s] %s: not run", msg.task, msg.id, reason, extra=_fields(msg, reason))
        self.propagate_failure(msg, TaskRevokedError(reason), None, batch)

    def _dead_unread(self, delivery: Delivery, batch: Batch, reason: str) -> None:
        """Dead-letter a message that cannot be read; where its id can be found, its result becomes
        FAILURE so nobody waits on it forever (not with security_key: an unverified message must not
        write anyone's result)."""
        task_id = peek_id(delivery.data)
        if task_id and not self.security_key:
            self.backend.store(batch.backend, task_id, states.FAILURE, DecodeError(f"dead-lettered: {reason}"))
        self._dead(delivery, batch, reason, task_id)

    def _dead(self, delivery: Delivery, batch: Batch, reason: str, task_id: Optional[str]) -> None:
        self.broker.dead_letter(batch.broker, delivery.data, reason, delivery.queue, task_id, self.hostname)
        self.broker.ack(batch.broker, delivery)
        if self.events is not None:
            self.events.raw("task-rejected", uuid=task_id, reason=reason, hostname=self.hostname, queue=delivery.queue)
        log.error("Dead-lettered message %s from %s: %s", task_id or "?", delivery.queue, reason,
                  extra={"task_id": task_id, "event": "dead-lettered", "queue": delivery.queue})
