"""Runs one delivered message and writes what becomes of it.

`Executor.handle(delivery)` finds how the delivery ends — before any body (a malformed record,
undecodable, forged, unknown task, revoked, expired, early) or after its body (success,
exception, retry, reject, ignore, replace) — as an `Outcome`, asks `settle()`
(minique/settle.py, the one place the rules live) what becomes of the message, and queues
what that says in the Outbox: the result, then the follow-ups (links, the next chain step,
the chord join, errbacks, the retry message), then the message's own fate. The Outbox
decides when those writes reach Redis.

Containment: any error while decoding, settling or writing one message (a bug, a value that
will not encode) becomes that message's INTERNAL outcome — dead letter plus FAILURE with the
reason — and never ends the process or touches the other messages of its batch.
"""
from __future__ import annotations

import inspect
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple, cast

import redis

from .. import canvas, caps, context, keys, loop, replay, retry as retry_engine, settle as fate, states, unique
from ..backend import format_traceback
from ..brokers import Delivery
from ..events import short_repr
from ..exceptions import (
    ChordError,
    ContentDisallowed,
    DecodeError,
    EncodeError,
    Ignore,
    NotRegistered,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    WorkerLostError,
)
from ..lua import Scripts
from ..message import Message, decode, peek_id
from ..metrics import REDELIVERED_AT, THROTTLED_AT
from ..settle import Outcome, Policy, Settlement, settle
from ..signals import (
    task_failure,
    task_internal_error,
    task_postrun,
    task_prerun,
    task_received,
    task_rejected,
    task_retry,
    task_revoked,
    task_success,
    task_unknown,
)
from ..signing import sign, verify
from ..trace import Hooks, Run, send_internal_error
from . import concurrency
from .outbox import NotStarted, Outbox
from .ratelimit import KEY_HEADER, RESERVED

log = logging.getLogger("minique.worker")
SCRIPTS = Scripts(Path(__file__).parent / "execute_lua")
_UNRUN = fate.PRE_RUN | {fate.INTERNAL}  # outcomes whose dead letter is the whole story (no task ran to tell of)
_Request = context.Request
_PASS = (NotStarted, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)  # the consumer's to handle
# the signal each outcome that ran no body sends (Celery's: the revoked, the unknown, the refused)
_UNRUN_SIGNAL = {**{kind: task_rejected for kind in fate.PRE_RUN}, fate.REVOKED: task_revoked,
                 fate.EXPIRED: task_revoked, fate.UNKNOWN_TASK: task_unknown}
_UNRUN_SIGNAL.pop(fate.EARLY)


class Job(NamedTuple):
    """One delivery being handled, with what is known of it so far."""

    delivery: Delivery
    msg: Optional[Message] = None
    task: Any = None
    policy: Policy = Policy()
    result_id: Optional[str] = None   # the id whose result may be written (None: unverified, or unknown)
    run: Any = None                   # trace.Run: hooks or task signals to call (None: a plain run)
    extra: Optional[Dict[str, Any]] = None  # stored with the result: children, result_extended's fields
    slot: Any = None                  # concurrency.Slot this run holds (released when the run is over)


class Admitted(NamedTuple):
    """A delivery that passed every check before its body: what running it takes."""

    job: Job
    args: List[Any]
    kwargs: Dict[str, Any]
    acks_late: bool
    soft: Optional[float]
    hard: Optional[float]
    track: bool
    hooks: Hooks
    wait: float = 0.0  # seconds to wait before the body (a worker-scope rate limit, in the asyncio pool)


def _fields(msg: Message, event: str, **more: Any) -> Dict[str, Any]:
    """Structured fields of a task log line (the JSON log format prints them)."""
    return {"task_id": msg.id, "task_name": msg.task, "event": event, "queue": msg.queue, **more}


class Executor:
    """Executes deliveries for one consumer (one pool slot), writing through its Outbox."""

    def __init__(self, app: Any, hostname: str, outbox: Outbox, events: Any = None, limiter: Any = None,
                 use_alarm: bool = True):
        self.app = app
        self.conf = app.conf
        self.backend = app.backend
        self.accept = app.accept
        self.hostname = hostname
        self.outbox = outbox
        self.events = events
        self.limiter = limiter  # ratelimit.RateLimiter, or None: no rate limits
        self.consumer: Any = self  # the sender of task_received/rejected/unknown (the Consumer sets itself)
        self.revoked: Set[Any] = set()
        self.max_size = int(self.conf.task_max_message_size or 0)
        self.max_deliveries = int(app.broker.max_deliveries)
        self.security_key = self.conf.security_key
        self.exc_max = self.conf.task_exception_max_size  # characters of an exception's text in events, logs, reasons
        self.repr_max = self.conf.task_argsrepr_max_size  # characters of a result's repr in the success log line
        self.max_age = replay.max_age_of(self.conf.security_message_max_age)  # replay protection (None: off)
        self._claimed: Optional[Tuple[Delivery, str]] = None  # the last delivery a once-only mark was asked for
        self.use_alarm = use_alarm
        self._signatures: Dict[str, inspect.Signature] = {}
        self._options: Dict[str, Tuple[Tuple[Any, ...], Tuple[Any, ...]]] = {}  # per task name, see _task_options
        self._options_version = -1
        self._succeeded: Dict[Policy, Settlement] = {}  # settle() of a success depends on the policy alone
        self._soft_armed = False   # SIGALRM now means the running task's soft time limit
        self._in_body = False      # a task body runs now (the Outbox's connection is idle)
        self.extended = bool(self.conf.result_extended)  # name, args, ... stored with each result
        self.in_loop = False  # the asyncio pool's: nothing may block (a rate limit's wait is the caller's)
        if use_alarm:
            signal.signal(signal.SIGALRM, self._on_alarm)

    def _on_alarm(self, signum: int, frame: Any) -> None:
        """SIGALRM: the running task's soft time limit, or the end of a deferred write (Outbox)."""
        if self._soft_armed:
            raise SoftTimeLimitExceeded()
        if self._in_body:
            self.outbox.on_alarm()

    # --- entry point --------------------------------------------------------------------------------
    def handle(self, delivery: Delivery) -> None:
        """Handle one delivery to its end; only a Redis failure (the consumer's to retry) escapes."""
        try:
            admitted = self._admit(delivery)
            if admitted is not None:
                self._run(admitted)
        except _PASS:
            raise
        except Exception as exc:  # noqa: BLE001 - contained: this message ends, nothing else does
            self._contained(delivery, exc)

    def admit(self, delivery: Delivery) -> Optional[Admitted]:
        """The checks before a body (the asyncio pool runs the body itself, see worker/eventloop.py): what running
        it needs, or None when the checks settled the message. Only a Redis failure escapes."""
        try:
            return self._admit(delivery)
        except _PASS:
            raise
        except Exception as exc:  # noqa: BLE001 - contained: this message ends, nothing else does
            self._contained(delivery, exc)
            return None

    def _contained(self, delivery: Delivery, exc: Exception) -> None:
        log.exception("internal error handling a message from %s", delivery.queue)
        decoded = self._decoded(delivery)
        trusted = decoded is not None and not self.security_key
        self._last_resort(Job(delivery, decoded, result_id=decoded.id if trusted and decoded else None), exc)

    def _admit(self, delivery: Delivery) -> Optional[Admitted]:
        """The checks, in order; one that ends the message records its outcome and returns None."""
        if delivery.problem:
            return self._unread(delivery, fate.MALFORMED, f"malformed record: {delivery.problem}")
        data = delivery.data
        if self.max_size and len(data) > self.max_size:
            return self._unread(delivery, fate.OVERSIZE, f"message of {len(data)} bytes is over "
                                                         f"task_max_message_size ({self.max_size})")
        try:
            msg = decode(data)
        except DecodeError as exc:
            return self._unread(delivery, fate.UNDECODABLE, f"undecodable message: {exc}")
        if self.security_key and not verify(msg, self.security_key):
            return self._ends(Job(delivery, msg), Outcome(fate.FORGED, reason="unsigned or forged message "
                                                                                "(security_key is set)"))
        if self.max_age is not None:
            stale = replay.staleness(msg, time.time(), self.max_age)
            if stale is not None:
                return self._ends(Job(delivery, msg), Outcome(fate.STALE, reason=stale))
        task = self.app.tasks.get(msg.task)
        if task is None:
            return self._ends(Job(delivery, msg, result_id=msg.id), Outcome(
                fate.UNKNOWN_TASK, NotRegistered(f"Received unregistered task of type {msg.task!r}: "
                                                 f"is its module in include=?"), f"unknown task {msg.task!r}"))
        acks_late, soft, hard, track, policy, hooks = self._task_options(task, msg.ignore_result)
        job = Job(delivery, msg, task, policy, msg.id)
        if delivery.deliveries > self.max_deliveries:
            return self._ends(job, Outcome(fate.TOO_MANY_DELIVERIES, WorkerLostError(
                f"dead-lettered: delivered {delivery.deliveries + 1} times "
                f"(task_max_deliveries {self.max_deliveries})"),
                f"too many deliveries ({delivery.deliveries + 1})"))
        if msg.id in self.revoked:
            return self._ends(job, Outcome(fate.REVOKED, TaskRevokedError("revoked")))
        now = time.time()
        if msg.expires is not None and now > msg.expires:
            return self._ends(job, Outcome(fate.EXPIRED, TaskRevokedError("expired")))
        if msg.eta is not None and msg.eta > now + 0.001:
            return self._ends(job, Outcome(fate.EARLY))
        try:
            args, kwargs = msg.args_kwargs(self.accept)
        except (ContentDisallowed, DecodeError) as exc:
            return self._ends(job, Outcome(fate.BAD_CONTENT, exc, str(exc)))
        wait = 0.0
        if self.events is not None:
            self.events.received(msg, data)
            if delivery.deliveries and self.events.recorder is not None:
                self.events.recorder.count(REDELIVERED_AT, msg.task, msg.queue)
        if task_received.receivers:
            task_received.send(sender=self.consumer, request=self._request(
                delivery, msg, args, kwargs, msg.time_limit or hard, msg.soft_time_limit or soft))
        if self.limiter is not None:  # the task's rate limit, if any (worker/ratelimit.py)
            if not self.limiter.cluster:  # Celery's per-worker limit: waits here, after a flush of the Outbox
                wait = self.limiter.acquire(msg.task, self.outbox,
                                            self.events.received_now if self.events is not None else None,
                                            sleep=not self.in_loop)
            else:
                at = self._throttled(task, msg, args, kwargs)
                if at is not None:
                    return self._ends(job._replace(msg=self._parked(msg, at)), Outcome(
                        fate.THROTTLED, reason=f"rate limit {task.rate_limit or ''}".strip()))
        if task.concurrency_limit:  # all its run slots taken: parked until one is free (worker/concurrency.py)
            job = job._replace(slot=concurrency.slot_of(task, msg.queue, msg.headers, args, kwargs))
            due = self._acquire(job, msg.time_limit or hard)
            if due is not None:
                return self._ends(job._replace(slot=None, msg=msg._replace(eta=due)), Outcome(
                    fate.CONCURRENCY, reason=f"concurrency limit {task.concurrency_limit}"))
        if self.max_age is not None:
            holder = self._claim(delivery, msg)
            if holder is not None:
                return self._ends(job._replace(result_id=None), Outcome(
                    fate.REPLAYED, reason=replay.replayed_reason(msg, delivery.deliveries, holder)))
        return Admitted(job, args, kwargs, acks_late, msg.soft_time_limit or soft, msg.time_limit or hard, track,
                        hooks, wait)

    def _claim(self, delivery: Delivery, msg: Message) -> Optional[bytes]:
        """Take this delivery's once-only mark (replay protection; SET NX, see minique/replay.py): None when
        it is ours, else who holds it. Asked again for the same delivery (its pre-run write failed, or the
        reply was lost and the client sent the SET again), the mark it took is still its own."""
        last = self._claimed
        if last is not None and last[0] is delivery:
            token = last[1]
        else:
            token = f"{self.hostname}:{os.getpid()}:{os.urandom(6).hex()}"
            self._claimed = (delivery, token)
        key = keys.replay_mark(msg.id, msg.retries, delivery.deliveries)
        try:
            held = SCRIPTS(self.app.broker_client, "replay_claim", [key],
                           [token, replay.mark_ttl_ms(msg, time.time(), self.max_age or 0.0)])
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise NotStarted(str(exc)) from exc  # kept, and handled again (with the same token) once Redis answers
        if held is None or held == token.encode():
            return None
        return cast(bytes, held)

    def _throttled(self, task: Any, msg: Message, args: List[Any], kwargs: Dict[str, Any]) -> Optional[float]:
        """Cluster-wide rate limit: None to run now, else the start reserved for this task (the message
        is parked until then). A message that comes back at the start it reserved runs without asking."""
        assert self.limiter is not None
        if not self.limiter.interval(msg.task):  # (most tasks: no limit)
            return None
        headers = msg.headers
        if headers and msg.eta is not None and headers.get(RESERVED) == msg.eta:
            return None
        key = headers.get(KEY_HEADER) if headers else None
        if key is None and task.rate_limit_key is not None:
            key = task.rate_limit_key(args, kwargs)
        try:
            return cast("float | None", self.limiter.reserve(msg.task, None if key is None else str(key)))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise NotStarted(str(exc)) from exc  # kept, and handled again once Redis answers

    def _acquire(self, job: Job, hard: Optional[float]) -> Optional[float]:
        """Take a run slot (None), or park the message among those waiting for one (the time it is due)."""
        msg, delivery = job.msg, job.delivery
        assert msg is not None and job.slot is not None
        lease = max(float(self.app.broker.visibility_timeout), float(hard or 0.0)) + 1.0
        try:
            return concurrency.acquire(self.app.broker_client, job.slot, msg.id, int(job.task.concurrency_limit),
                                       lease, str(delivery.priority).encode() + delivery.data)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise NotStarted(str(exc)) from exc  # kept, and handled again once Redis answers

    def _parked(self, msg: Message, at: float) -> Message:
        """The message as it waits for its reserved start: due then, and marked as holding it."""
        parked = msg._replace(eta=at, headers={**(msg.headers or {}), RESERVED: at}, signature=None)
        return sign(parked, self.security_key) if self.security_key else parked

    def _ends(self, job: Job, outcome: Outcome) -> Optional[Admitted]:
        """A message the checks before its body end: recorded (see _record); nothing to run (None)."""
        self._record(job, outcome)
        return None

    def _unread(self, delivery: Delivery, kind: str, reason: str) -> Optional[Admitted]:
        """A message that cannot be read: where its id can be found, its result becomes FAILURE so
        nobody waits on it forever (not with security_key: an unverified message writes no result)."""
        task_id = peek_id(delivery.data)
        job = Job(delivery, result_id=None if self.security_key else task_id)
        return self._ends(job, Outcome(kind, DecodeError(f"dead-lettered: {reason}"), reason))

    # --- running ------------------------------------------------------------------------------------
    def _run(self, a: Admitted) -> None:
        job = self.begin(a)
        msg, task, soft, outbox = job.msg, job.task, a.soft, self.outbox
        assert msg is not None
        outbox.before_body(bool(soft))
        args, kwargs, run = a.args, a.kwargs, job.run
        context.push(lambda: self._request(job.delivery, msg, args, kwargs, a.hard, soft))  # built if asked for
        started = time.monotonic()
        alarm = bool(soft and self.use_alarm and not task.is_async)  # (an async body's limit: loop.run's timer)
        if alarm:
            self._soft_armed = True
            signal.setitimer(signal.ITIMER_REAL, soft or 0.0)
        self._in_body = True
        error: Optional[BaseException] = None
        value = None
        try:
            if run is None:
                value = task.run(task, *args, **kwargs) if task.bind else task.run(*args, **kwargs)
            else:
                value = run.body()
            if task.is_async:  # an async def: the coroutine runs on this process's loop
                value = loop.run(value, soft)
        except BaseException as exc:  # noqa: BLE001 - every outcome is recorded, none escapes
            error = exc
        self._in_body = False
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._soft_armed = False
        outbox.end(time.monotonic() - started)
        self.conclude(job, a, value, error)

    def begin(self, a: Admitted) -> Job:
        """What comes before a body, queued (the pre-run write sends it): the slot's record, the early ack,
        STARTED, the task-started event. Returns the job, with its trace.Run when hooks or signals want one."""
        job, args, kwargs = a.job, a.args, a.kwargs
        delivery, msg, outbox = job.delivery, job.msg, self.outbox
        assert msg is not None
        if a.hooks.any or (task_prerun.receivers or task_postrun.receivers or task_success.receivers
                           or task_failure.receivers or task_retry.receivers or task_internal_error.receivers):
            job = job._replace(run=Run(a.hooks, msg.id, args, kwargs))  # hooks or task signals (minique/trace.py)
        if outbox.slot is not None:  # names the task, so the parent can settle it if this process dies
            outbox.slot.begin(msg, delivery, a.hard or 0.0, a.acks_late)
        if not a.acks_late:
            self.app.broker.ack(outbox.broker, delivery)
        if msg.headers and msg.headers.get(unique.UNTIL_HEADER) == "started":  # released as it starts
            unique.release(outbox.broker, str(msg.headers.get(unique.HEADER)), msg.id)
        if a.track and not msg.ignore_result:
            started_extra = {"hostname": self.hostname, "pid": os.getpid()}
            if self.extended:
                started_extra.update(self._extra(job, args, kwargs, None))
            self.backend.store(outbox.backend, msg.id, states.STARTED, None, extra=started_extra)
        if self.events is not None:
            self.events.started(msg, args, kwargs)
            self.events.before_run(outbox.broker)
        return job

    def conclude(self, job: Job, a: Admitted, value: Any, error: Optional[BaseException],
                 outcome: Optional[Outcome] = None) -> None:
        """The body returned `value` or raised `error`: record what that means (`outcome`: what it was cut
        off as, in the asyncio pool: a hard time limit, a terminate). The request made current for the body
        is taken off here (after after_return and task_postrun, when hooks run)."""
        if job.run is None:
            request = context.pop()
        else:
            request = context.current()  # (it stays current until after_return, below)
        if self.extended or request.__class__ is _Request and request.children:
            job = job._replace(extra=self._extra(job, a.args, a.kwargs, request))
        try:
            if error is None:
                self._succeeded_with(job, value)
            elif isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise error
            elif outcome is not None:
                self._record(job, outcome)
                if outcome.kind == fate.TERMINATED and task_revoked.receivers:
                    task_revoked.send(sender=job.task, request=request, terminated=True, signum=signal.SIGTERM,
                                      expired=False)
            else:
                self._record(job, self._failed(job, a.args, a.kwargs, error))
        finally:
            if job.run is not None:  # after_return and task_postrun, the request still current (as in Celery)
                try:
                    job.run.finish()
                finally:
                    context.pop()

    def _succeeded_with(self, job: Job, value: Any) -> None:
        """The body returned. Its result is encoded first: a value that will not encode is the task's
        failure (EncodeError), not the worker's. Then what settle() says of a success under the task's
        policy (asked once per policy: the answer does not depend on the value) is written here
        directly, the per-task path of every worker (`_record` is the general one)."""
        msg, outbox = job.msg, self.outbox
        assert msg is not None
        encoded = None
        if not msg.ignore_result:
            try:
                encoded = self.backend.encode_meta(msg.id, states.SUCCESS, value, serializer=job.task.serializer,
                                                   extra=job.extra)
            except EncodeError as exc:
                return self._record(job, Outcome(fate.FAILURE, exc))
        settlement = self._succeeded.get(job.policy)
        if settlement is None:
            settlement = self._succeeded[job.policy] = settle(Outcome(fate.SUCCESS), job.policy)
        mark = len(outbox.broker.command_stack), len(outbox.backend.command_stack)  # (Outbox.mark, inlined)
        try:
            if encoded is not None:
                self.backend.write_meta(outbox.backend, msg.id, states.SUCCESS, encoded)
            if msg.links or msg.chain or msg.chord:
                self._on_success(job, value)
            if msg.headers:
                key = msg.headers.get(unique.HEADER)
                if key is not None:  # a unique task's key: the next send may claim it (unique.py)
                    unique.release(outbox.broker, str(key), msg.id)
            if job.slot is not None:  # its concurrency slot: the first one waiting runs now
                concurrency.release(outbox.broker, job.slot, msg.id)
            if settlement.ack:
                self.app.broker.ack(outbox.broker, job.delivery)
        except _PASS:
            raise
        except Exception as exc:  # noqa: BLE001 - contained (see the module docstring)
            outbox.rollback(mark)
            log.exception("internal error recording the success of %s", msg.id)
            return self._last_resort(job, exc)
        runtime = outbox.last_runtime
        if self.events is not None:
            self.events.succeeded(msg, runtime)
        if log.isEnabledFor(logging.INFO):
            log.info("Task %s[%s] succeeded in %.6fs: %s", msg.task, msg.id, runtime,
                     short_repr(value, self.repr_max), extra=_fields(msg, "succeeded", runtime=runtime))
        if job.run is not None:
            job.run.succeeded(value)
        return None

    def _failed(self, job: Job, args: List[Any], kwargs: Dict[str, Any], exc: BaseException) -> Outcome:
        """The outcome a body that raised `exc` ends with."""
        task, msg = job.task, job.msg
        assert msg is not None
        if isinstance(exc, canvas.Replace):
            return Outcome(fate.REPLACE, exc)
        if isinstance(exc, Retry):
            return Outcome(fate.RETRY, exc)
        if isinstance(exc, Reject):
            return Outcome(fate.REJECT, exc)
        if isinstance(exc, Ignore):
            return Outcome(fate.IGNORE, exc)
        if isinstance(exc, TypeError) and not self._args_fit(task, args, kwargs):
            return Outcome(fate.BAD_ARGUMENTS, TypeError(f"{msg.task}() called with wrong arguments: {exc}"))
        when = retry_engine.autoretry_at(time.time(), task.policy, msg.retries, exc, task.autoretry_for,
                                         task.retry_kwargs)
        if when is not None:
            return Outcome(fate.RETRY, Retry(exc=exc, when=when))
        return Outcome(fate.FAILURE, exc)

    def _task_options(self, task: Any, ignore_result: bool) -> Tuple[Any, ...]:
        """(acks_late, soft_time_limit, time_limit, track_started, policy, hooks) of a task under the
        settings: read once per task (the settings' lookups cost more than a no-op task's body)."""
        conf = self.conf
        if self._options_version != conf.version:
            self._options.clear()
            self._succeeded.clear()
            self._options_version = conf.version
        options = self._options.get(task.name)
        if options is None:
            acks_late = bool(conf.task_acks_late if task.acks_late is None else task.acks_late)
            store_errors = task.store_errors_even_if_ignored
            policy = Policy(
                acks_late=acks_late, acks_on_failure_or_timeout=bool(conf.task_acks_on_failure_or_timeout),
                reject_on_worker_lost=bool(conf.task_reject_on_worker_lost if task.reject_on_worker_lost is None
                                           else task.reject_on_worker_lost),
                max_deliveries=self.max_deliveries,
                store_errors_even_if_ignored=bool(conf.task_store_errors_even_if_ignored if store_errors is None
                                                  else store_errors))
            common = (acks_late, task.soft_time_limit or conf.task_soft_time_limit,
                      task.time_limit or conf.task_time_limit,
                      conf.task_track_started if task.track_started is None else task.track_started)
            hooks = Hooks(task)  # which hooks its class overrides, found once
            options = self._options[task.name] = (common + (policy, hooks),  # by the message's ignore_result
                                                  common + (policy._replace(ignore_result=True), hooks))
        return options[ignore_result]

    def _request(self, delivery: Delivery, msg: Message, args: List[Any], kwargs: Dict[str, Any], hard: Optional[float],
                 soft: Optional[float]) -> context.Request:
        return context.Request(
            id=msg.id, task=msg.task, args=args, kwargs=kwargs, retries=msg.retries, root_id=msg.root_id,
            parent_id=msg.parent_id, group=msg.group_id, group_index=msg.group_index, hostname=self.hostname,
            delivery_info={"queue": delivery.queue, "priority": delivery.priority,
                           "redelivered": delivery.deliveries > 0},
            eta=msg.eta, expires=msg.expires, headers=msg.headers, chord=msg.chord, chain=msg.chain,
            callbacks=msg.links, errbacks=msg.errbacks, message=msg, ignore_result=msg.ignore_result,
            time_limit=hard, soft_time_limit=soft, delivery_count=delivery.deliveries, is_eager=False)

    def _extra(self, job: Job, args: Optional[List[Any]], kwargs: Optional[Dict[str, Any]],
               request: Any) -> Dict[str, Any]:
        """What is stored with the result besides the value: the children the body sent, and with
        result_extended, Celery's name, args, kwargs, worker, queue, retries (date_done is the
        record's time). Off the common path: only when one of them is there."""
        extra: Dict[str, Any] = {}
        if request.__class__ is _Request and request.children:
            extra["children"] = request.children
        msg = job.msg
        if self.extended and msg is not None:
            if args is None:  # an outcome before the body: the arguments, if they can be read
                try:
                    args, kwargs = msg.args_kwargs(self.accept)
                except Exception:  # noqa: BLE001 - the record stands without them
                    args, kwargs = None, None
            extra.update(name=msg.task, args=args, kwargs=kwargs, worker=self.hostname,
                         queue=job.delivery.queue or msg.queue, retries=msg.retries)
        return extra

    def _args_fit(self, task: Any, args: List[Any], kwargs: Dict[str, Any]) -> bool:
        sig = self._signatures.get(task.name)
        if sig is None:
            sig = self._signatures[task.name] = inspect.signature(task.run)
        try:
            sig.bind(*(([task] if task.bind else []) + list(args)), **kwargs)
            return True
        except TypeError:
            return False

    # --- writing what settle() decided --------------------------------------------------------------
    def _settle(self, outcome: Outcome, policy: Policy, deliveries: int) -> Settlement:
        """settle(), with the dead-letter reason cut to task_exception_max_size (it may hold an exception)."""
        settlement = settle(outcome, policy, deliveries)
        if settlement.dead_letter is not None and self.exc_max and len(settlement.dead_letter) > self.exc_max:
            settlement = settlement._replace(dead_letter=caps.cut(settlement.dead_letter, self.exc_max))
        return settlement

    def _repr(self, value: Any) -> str:
        """An exception's (or a reason's) repr as events and logs show it: cut to task_exception_max_size."""
        return caps.safe_repr(value, self.exc_max)

    def _record(self, job: Job, outcome: Outcome) -> None:
        """Settle the outcome and queue its writes (every outcome but a success, which has its own
        path: _succeeded_with); if that fails, take them back and end the message as INTERNAL instead
        (dead letter + FAILURE with the reason)."""
        settlement = self._settle(outcome, job.policy, job.delivery.deliveries)
        mark = self.outbox.mark()
        try:
            self._write(job, outcome, settlement)
        except _PASS:
            raise
        except Exception as exc:  # noqa: BLE001 - contained (see the module docstring)
            self.outbox.rollback(mark)
            if outcome.kind == fate.INTERNAL:
                raise
            log.exception("internal error recording %s of %s", outcome.kind, job.msg and job.msg.id)
            return self._last_resort(job, exc)
        try:
            self._tell(job, outcome, settlement)
        except Exception:  # noqa: BLE001 - an event or a log line never changes a message's fate
            log.exception("could not report %s of %s", outcome.kind, job.msg and job.msg.id)
        if job.run is not None:
            self._settled_run(job.run, outcome, settlement)
        else:
            unrun = _UNRUN_SIGNAL.get(outcome.kind)
            if unrun is not None and unrun.receivers or outcome.kind == fate.INTERNAL:
                self._announce_unrun(job, outcome)
        return None

    def _settled_run(self, run: Any, outcome: Outcome, s: Settlement) -> None:
        """The hook and the signal of what settle() decided for a traced run: an autoretry is on_retry,
        a failure (also past max_retries, or a requeue past task_max_deliveries) on_failure."""
        kind = outcome.kind
        if s.event == "task-retried":
            run.retried(outcome.value)
        elif s.event == "task-failed" and kind != fate.REJECT:
            run.failed(s.result if s.result is not None else outcome.value)
        elif kind == fate.INTERNAL:
            run.internal_error(outcome.value)
        else:
            run.ended(states.REJECTED if kind == fate.REJECT else states.IGNORED, outcome.value)

    def _announce_unrun(self, job: Job, outcome: Outcome) -> None:
        """task_revoked / task_unknown / task_rejected / task_internal_error for a message no body ran for."""
        msg, kind, exc = job.msg, outcome.kind, outcome.value
        if kind == fate.INTERNAL:
            send_internal_error(job.task, msg.id if msg is not None else None, None, None,
                                self._request_of(job) if msg is not None else None, exc)
        elif kind == fate.UNKNOWN_TASK and msg is not None:
            task_unknown.send(sender=self.consumer, message=job.delivery, exc=exc, name=msg.task, id=msg.id)
        elif kind in (fate.REVOKED, fate.EXPIRED) and msg is not None:
            task_revoked.send(sender=job.task, request=self._request_of(job), terminated=False, signum=None,
                              expired=kind == fate.EXPIRED)
        else:
            task_rejected.send(sender=self.consumer, message=job.delivery, exc=exc)

    def _request_of(self, job: Job) -> context.Request:
        """The request of a message no body ran for (its arguments if they decode)."""
        msg = job.msg
        assert msg is not None
        try:
            args, kwargs = msg.args_kwargs(self.accept)
        except Exception:  # noqa: BLE001 - only to describe it to a signal's receivers
            args, kwargs = [], {}
        return self._request(job.delivery, msg, args, kwargs, msg.time_limit, msg.soft_time_limit)

    def _last_resort(self, job: Job, exc: BaseException) -> None:
        """INTERNAL: the message goes to the dead letters with the error; its result becomes FAILURE."""
        try:
            text = str(exc)
        except Exception:  # noqa: BLE001 - a broken __str__
            text = "<unprintable>"
        reason = caps.cut(f"internal error: {type(exc).__name__}: {text}", self.exc_max)
        self._record(job, Outcome(fate.INTERNAL, exc, reason))

    def _write(self, job: Job, outcome: Outcome, s: Settlement) -> None:
        """Results, then follow-ups, then the message's fate (the Outbox keeps that order on the wire)."""
        msg, outbox = job.msg, self.outbox
        result = s.result if s.result is not None else outcome.value
        if s.state is not None and job.result_id is not None:
            extra = {"reason": outcome.kind} if s.state == states.REVOKED else None
            if job.extra is not None or self.extended and msg is not None:
                extra = {**(job.extra or self._extra(job, None, None, None)), **(extra or {})}
            tb = (format_traceback(result, self.exc_max) if isinstance(result, BaseException) and result.__traceback__
                  else None)
            self.backend.store(outbox.backend, job.result_id, s.state, result, tb, None, extra)
        if msg is not None:
            if s.resend and self.max_age is not None:  # the same bytes run again: give their mark back first
                outbox.broker.execute_command("DEL", keys.replay_mark(msg.id, msg.retries, job.delivery.deliveries))
            if s.park:
                self.app.publish(outbox.broker, msg)
            if s.retry:
                self._send_retry(msg, outcome.value)
            if s.follow == fate.FOLLOW_FAILURE:
                self._propagate_failure(msg, result)
            elif s.follow == fate.FOLLOW_REPLACE:
                self._replace(msg, outcome.value.sig)
            if fate.releases(outcome.kind, s):
                if msg.headers:
                    key = msg.headers.get(unique.HEADER)
                    if key is not None:
                        unique.release(outbox.broker, str(key), msg.id)
                if job.slot is not None:
                    concurrency.release(outbox.broker, job.slot, msg.id)
        outbox.apply(job.delivery, s, msg.id if msg is not None else peek_id(job.delivery.data), self.hostname)

    def _tell(self, job: Job, outcome: Outcome, s: Settlement) -> None:
        """The task event and the log line of a settlement."""
        msg, events = job.msg, self.events
        result = s.result if s.result is not None else outcome.value
        if msg is None or s.dead_letter is not None and outcome.kind in _UNRUN:
            task_id = msg.id if msg is not None else peek_id(job.delivery.data)
            if events is not None:
                events.raw("task-rejected", uuid=task_id, reason=s.dead_letter, hostname=self.hostname,
                           queue=job.delivery.queue)
            log.error("Dead-lettered message %s from %s: %s", task_id or "?", job.delivery.queue, s.dead_letter,
                      extra={"task_id": task_id, "event": "dead-lettered", "queue": job.delivery.queue})
            return
        kind = outcome.kind
        if s.event == "task-retried":
            exc = outcome.value
            shown = self._repr(exc.exc)
            if events is not None:
                events.task("task-retried", msg, exception=shown, eta=exc.when)  # (eta: when it runs next)
            log.info("Task %s[%s] retry %d %s: %s", msg.task, msg.id, msg.retries + 1, exc.humanize(), shown,
                     extra=_fields(msg, "retried"))
        elif kind == fate.REJECT:
            reason = caps.cut(f"rejected by the task: {outcome.value.reason}", self.exc_max)
            if events is not None:
                events.task("task-rejected", msg, reason=reason, requeue=bool(outcome.value.requeue),
                            dead=s.dead_letter is not None)
            log.warning("Task %s[%s] %s (%s)", msg.task, msg.id, reason,
                        "requeued" if s.requeue or s.resend else "dead-lettered", extra=_fields(msg, "rejected"))
        elif kind == fate.CONCURRENCY:
            self._count_throttled(msg)
            if events is not None:
                events.raw("task-throttled", uuid=msg.id, name=msg.task, queue=msg.queue, hostname=self.hostname,
                           eta=msg.eta, reason=outcome.reason)
            log.info("Task %s[%s] waits for a run slot (%s)", msg.task, msg.id, outcome.reason,
                     extra=_fields(msg, "waiting"))
        elif kind == fate.THROTTLED:
            self._count_throttled(msg)
            at = msg.eta or 0.0
            if events is not None:
                events.raw("task-throttled", uuid=msg.id, name=msg.task, queue=msg.queue, hostname=self.hostname,
                           eta=at, reason=outcome.reason)
            log.info("Task %s[%s] over its %s: runs at %s (in %.3fs)", msg.task, msg.id, outcome.reason,
                     time.strftime("%H:%M:%S", time.localtime(at)), at - time.time(), extra=_fields(msg, "throttled"))
        elif s.event == "task-revoked":
            if events is not None:
                events.task("task-revoked", msg, reason=kind)
            log.info("Task %s[%s] %s: not run", msg.task, msg.id, kind, extra=_fields(msg, kind))
        elif s.event == "task-failed":
            shown = self._repr(result)
            if events is not None:
                events.task("task-failed", msg, exception=shown)
            log.error("Task %s[%s] raised %s%s", msg.task, msg.id, shown,
                      f"; dead-lettered: {s.dead_letter}" if s.dead_letter else "", extra=_fields(msg, "failed"))

    def _count_throttled(self, msg: Message) -> None:
        if self.events is not None and self.events.recorder is not None:
            self.events.recorder.count(THROTTLED_AT, msg.task, msg.queue)

    def _send_retry(self, msg: Message, exc: Retry) -> None:
        new = retry_engine.next_message(msg, exc.when, getattr(exc, "args_override", None),
                                        getattr(exc, "kwargs_override", None), self.accept)
        if self.security_key:
            new = sign(new, self.security_key)
        self.app.publish(self.outbox.broker, new)

    # --- the canvas ---------------------------------------------------------------------------------
    def _on_success(self, job: Job, value: Any) -> None:
        msg = job.msg
        assert msg is not None
        if msg.links or msg.chain:
            self.app.send_calls(canvas.success_calls(self.app, msg.id, msg.root_id, msg.links, msg.chain, value),
                                self.outbox.broker)
        if msg.chord:
            self._chord_member_done(msg, msg.chord, value, job.task.serializer)

    def _chord_member_done(self, msg: Message, info: Dict[str, Any], value: Any, serializer: Optional[str]) -> None:
        outbox = self.outbox

        def complete(results: List[Any]) -> None:  # called once per chord, when the last member's join is read
            callback = canvas.from_dict(info["cb"], self.app)
            follow = {"parent_id": msg.id, "root_id": msg.root_id or msg.id}
            self.app.send_calls(callback.plan((results,), None, follow), outbox.broker)
            self.backend.chord_sent(outbox.backend, info["id"])

        self.backend.chord_join(outbox.backend, info["id"], msg.group_index or 0, info["n"], value, serializer,
                                complete)

    def _replace(self, msg: Message, sig: Any) -> None:
        sig = canvas.from_dict(sig, self.app)
        if isinstance(sig, canvas.group):
            sig = canvas.chord(sig, self.app.tasks["minique.identity"].s(), app=self.app)
        own: Dict[str, Any] = {"task_id": msg.id, "root_id": msg.root_id}
        for key, value in (("chain", msg.chain), ("chord", msg.chord), ("group_id", msg.group_id),
                           ("group_index", msg.group_index), ("link", msg.links), ("link_error", msg.errbacks)):
            if value is not None:
                own[key] = value
        self.app.send_calls(sig.plan((), None, own), self.outbox.broker)

    def _propagate_failure(self, msg: Message, exc: BaseException) -> None:
        """What a failure means downstream (canvas.failure_downstream says; this writes it)."""
        self._fail_downstream(canvas.failure_downstream(self.app, msg.id, msg.errbacks, msg.chain, msg.chord), exc)

    def _fail_downstream(self, down: canvas.Downstream, exc: BaseException) -> None:
        outbox = self.outbox
        for task_id in down.failed_ids:
            self.backend.store(outbox.backend, task_id, states.FAILURE, exc)
        self.app.send_calls(down.errbacks, outbox.broker)
        for chord_id, member_id, callback in down.chords:
            if self.backend.chord_fail(chord_id):  # exactly one failure claims a chord's end
                error = ChordError(f"Dependency {member_id} raised {exc!r}")
                self._fail_downstream(canvas.abandoned(self.app, callback), error)

    # --- the parent's side -------------------------------------------------------------------------
    def settle_lost(self, outcome: Outcome, task_id: str, task_name: str, data: Optional[bytes],
                    delivery: Optional[Delivery], ignore_result: bool = False) -> Settlement:
        """Write the fate of a task whose pool process is gone (lost, killed at its hard time limit,
        terminated, cut off by a cold shutdown); `delivery`: its message, if still held (acks_late)."""
        task = self.app.tasks.get(task_name)
        policy = (self._task_options(task, ignore_result)[4] if task is not None
                  else Policy(max_deliveries=self.max_deliveries, ignore_result=ignore_result))
        if delivery is None:  # acked already (early ack): nothing left to ack, requeue or dead-letter
            policy = policy._replace(acks_late=False)
        msg = self._decoded(Delivery(data, "", 0, 0, None)) if data is not None else None
        job = Job(delivery or Delivery(data or b"", "", 0, 0, None), msg, task, policy, task_id,
                  slot=self._slot_held(task, msg))
        settlement = self._settle(outcome, policy, delivery.deliveries if delivery is not None else 0)
        self._write(job, outcome, settlement)
        if msg is not None and task is not None:
            self._lost_announced(job, outcome, settlement)
        return settlement

    def _slot_held(self, task: Any, msg: Optional[Message]) -> Any:
        """The concurrency slot a lost task held (its limit's keys come from its arguments), or None."""
        if msg is None or task is None or not task.concurrency_limit:
            return None
        try:
            args, kwargs = msg.args_kwargs(self.accept)
            return concurrency.slot_of(task, msg.queue, msg.headers, args, kwargs)
        except Exception:  # noqa: BLE001 - its lease still ends the slot
            log.warning("could not find the concurrency slot of lost task %s; it ends with its lease", msg.id)
            return None

    def _lost_announced(self, job: Job, outcome: Outcome, s: Settlement) -> None:
        """As Celery's parent does: on_failure and task_failure for a task lost or killed at its time
        limit, task_revoked (terminated) for one terminated by a revoke."""
        task, msg, exc = job.task, job.msg, s.result if s.result is not None else outcome.value
        assert msg is not None
        if outcome.kind == fate.TERMINATED:
            if task_revoked.receivers:
                task_revoked.send(sender=task, request=self._request_of(job), terminated=True, signum=None,
                                  expired=False)
            return
        if s.event != "task-failed" or not isinstance(exc, BaseException):
            return
        hooks = self._task_options(task, msg.ignore_result)[5]
        if hooks.on_failure is not None or task_failure.receivers:
            try:
                args, kwargs = msg.args_kwargs(self.accept)
            except Exception:  # noqa: BLE001 - only to describe it
                args, kwargs = [], {}
            Run(hooks, msg.id, args, kwargs).failed(exc)

    @staticmethod
    def _decoded(delivery: Delivery) -> Optional[Message]:
        try:
            return decode(delivery.data)
        except Exception:  # noqa: BLE001 - only to name the message in the dead letter
            return None
