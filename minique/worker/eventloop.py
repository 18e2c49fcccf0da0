"""The asyncio pool (`-P asyncio`): one event loop per pool process, up to `worker_async_concurrency`
tasks running on it at once.

`AsyncConsumer` is a Consumer (consumer.py) whose loop is a coroutine. Each turn it takes messages only
for its free places (a process never holds more than it can start: prefetch scales with the loop's
concurrency, not with worker_prefetch_multiplier), passes each through the Executor's checks (`admit`)
and pre-run steps (`begin`), makes its body an asyncio task, and sends what the Executor queued (pre-run
writes, and the results and acks of the bodies that ended) in one write at the end of the turn; the new
bodies first run after it, as they do after their pre-run write in the other pools. A plain `def` task's
body runs in a bounded thread executor, so it never blocks the loop. When there is nothing to take, a
blocking wait for messages runs in a thread (on a pooled connection of its own) while the loop goes on.

Each running task has a lane in the process's slot (slots.Lanes), kept until its writes are sent, so
the parent settles every task of a process that dies. Time limits: the soft limit cancels the body at its
await point (SoftTimeLimitExceeded, as `minique.loop`), the hard limit cancels it as TimeLimitExceeded;
a body that does not end then (a blocked loop, a thread) is the parent's: it replaces the process after
HARD_GRACE. A revoke with terminate cancels the one task (its lane names it), not the process.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Deque, Dict, List, Optional, Set

import redis

from .. import context, loop as task_loop, settle as fate
from ..brokers import Delivery
from ..exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from ..settle import Outcome
from .consumer import PAUSED_NAP, Consumer
from .execute import Admitted, Job
from .outbox import FETCH_BLOCK

log = logging.getLogger("minique.worker")
HARD_GRACE = 1.0  # seconds past a hard time limit after which the parent replaces a process whose task did not end
SYNC_THREADS = 32  # at most this many plain def bodies at once in one process (never more than its places)


class _Running:
    """One task on the loop: its delivery, and why it was cancelled (None: it was not)."""

    __slots__ = ("delivery", "task_id", "is_async", "why")

    def __init__(self, delivery: Delivery, task_id: str, is_async: bool):
        self.delivery = delivery
        self.task_id = task_id
        self.is_async = is_async
        self.why: Optional[Outcome] = None


class AsyncConsumer(Consumer):
    """The fetch-run loop of one asyncio-pool process: many tasks at once on one event loop."""

    def __init__(self, *args: Any, concurrency: int, **kwargs: Any):
        kwargs.update(use_alarm=False, fetch_ahead=False)  # (no SIGALRM: time limits are the loop's timers)
        super().__init__(*args, **kwargs)
        self.concurrency = max(1, concurrency)
        self.lanes = self.slot.lanes if self.slot is not None else None
        self.outbox.slot = self.lanes  # a lane is freed when the write that carries its task's results is sent
        self.executor.in_loop = True
        self.running: Dict["asyncio.Task[None]", _Running] = {}
        self.pending: Deque[Delivery] = deque()  # taken, not yet admitted (Redis failed the checks' round trip)
        self._threads: Optional[ThreadPoolExecutor] = None  # for plain def bodies, made when one comes
        self._waiter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minique-wait")
        self._kick: Optional[asyncio.Event] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._drain = False     # recycling: no more messages taken
        self._exit_now = False  # a body raised SystemExit/KeyboardInterrupt: the process ends, its lanes say what ran

    # --- process integration ------------------------------------------------------------------------
    def install_signals(self) -> None:
        """Until the loop runs, a SIGTERM only marks the stop (the loop's own handlers take over)."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda s, f: self._stop())
        signal.signal(signal.SIGUSR2, lambda s, f: None)

    def _stop(self) -> None:
        self.stopping = self.outbox.stopping = True
        self._wake()

    def _wake(self) -> None:
        if self._kick is not None:
            self._kick.set()

    def _on_news(self) -> None:
        """SIGUSR2: the parent bumped the control number (a pause, a terminate): the next turn looks."""
        self._wake()

    # --- loop ---------------------------------------------------------------------------------------
    def run(self) -> None:
        loop = self._loop = task_loop.current_loop()  # (the loop async bodies see as theirs)
        loop.add_signal_handler(signal.SIGTERM, self._stop)
        loop.add_signal_handler(signal.SIGUSR2, self._on_news)
        context.set_result_writer(self.outbox.write_now)  # update_state from bodies on the loop
        try:
            loop.run_until_complete(self._main())
        finally:
            for sig in (signal.SIGTERM, signal.SIGUSR2):
                loop.remove_signal_handler(sig)
            self._waiter.shutdown(wait=False)
            if self._threads is not None:
                self._threads.shutdown(wait=False)
        if self._exit_now:
            return
        try:
            self._on_idle()
            self.outbox.flush()
        except redis.exceptions.RedisError as exc:
            log.warning("could not flush on exit: %s", exc)

    async def _main(self) -> None:
        kick = self._kick = asyncio.Event()
        parent = os.getppid()
        outbox = self.outbox
        waiting: Optional["asyncio.Future[List[Delivery]]"] = None  # a blocking wait for messages, in a thread
        waiting_at = 0.0
        backoff = 0.05
        while not self._exit_now:
            kick.clear()
            try:
                self._check_control()
                if waiting is not None and waiting.done():
                    found, waiting = waiting, None
                    self.pending.extend(self._still_ours(found.result(), waiting_at))
                if not self.stopping:  # (stopping, what was taken stays unstarted: the parent gives it back)
                    self._start_pending()
                if self.stopping or self._draining():
                    if not self.running and waiting is None and (self.stopping or not self.pending):
                        break
                elif waiting is None and self._free() > 0 and outbox.queues:
                    if self._suspect or time.monotonic() >= self._audit_at:
                        outbox.flush()
                        self._audit()
                    asked_at = time.monotonic()
                    found_now = self._still_ours(outbox.take(self._free()), asked_at)
                    if found_now:
                        self.pending.extend(found_now)
                        self._start_pending()
                    else:
                        if not self.running:
                            if os.getppid() != parent and self.slot is not None:
                                log.warning("worker parent is gone; child %s stops", self.name)
                                break
                            self._on_idle()
                        waiting_at = time.monotonic()
                        waiting = asyncio.ensure_future(self._loop_().run_in_executor(
                            self._waiter, self.app.broker.wait, self.name, list(outbox.queues), self._free(),
                            FETCH_BLOCK))
                        waiting.add_done_callback(lambda _: kick.set())
                if self.events is not None:
                    self.events.maybe_flush(outbox.broker)
                if len(outbox.broker) or len(outbox.backend):
                    outbox.flush()
                backoff = 0.05
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("Redis unreachable (%s); retrying in %.2fs", exc, backoff)
                self._suspect = True
                if waiting is not None and waiting.done():
                    waiting = None  # (its error is this one, or the next turn's)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except Exception as exc:  # noqa: BLE001 - one turn's error never ends the loop
                self._report(("loop", type(exc).__name__), "consumer %s: a turn of its loop failed: %r; retrying "
                             "in %.2fs", self.name, exc, backoff, exc_info=True)
                self._suspect = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            timeout = PAUSED_NAP if not outbox.queues else FETCH_BLOCK
            try:
                await asyncio.wait_for(kick.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        if waiting is not None:  # (what it took is given back by the parent, as unstarted messages)
            try:
                await waiting
            except Exception:  # noqa: BLE001 - the process stops either way
                pass

    def _still_ours(self, found: List[Delivery], asked_at: float) -> List[Delivery]:
        """Messages whose fetch reply came more than half a visibility timeout after it was sent (held up by a
        network partition) are kept only if this consumer still holds them (Consumer._still_held)."""
        if not found or time.monotonic() - asked_at <= self._stale_after:
            return found
        return self._still_held(found)

    def _loop_(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def _free(self) -> int:
        """Places for more tasks (none past max_tasks_per_child)."""
        free = self.concurrency - len(self.running) - len(self.pending)
        if self.max_tasks:
            free = min(free, self.max_tasks - self.processed - len(self.running) - len(self.pending))
        return free

    def _draining(self) -> bool:
        """max_tasks_per_child or max_memory_per_child reached: take no more; the process ends once its
        tasks have."""
        if not self._drain and self.processed and self._recycle_due():
            self._drain = True
        return self._drain

    def _in_hand(self) -> Set[Any]:
        return {d.receipt for d in self.pending} | {r.delivery.receipt for r in self.running.values()}

    # --- starting and ending tasks ------------------------------------------------------------------
    def _start_pending(self) -> None:
        """Admit and begin what was taken; the bodies start after this turn's write."""
        executor, pending = self.executor, self.pending
        while pending:
            delivery = pending[0]
            if self.paused and delivery.queue in self.paused:  # taken as its queue was paused: given back
                self.app.broker.requeue(delivery, redelivered=False, pipe=self.outbox.broker)
                pending.popleft()
                continue
            admitted = executor.admit(delivery)  # (a Redis failure leaves it pending: the next turn tries again)
            pending.popleft()
            if admitted is None:
                self.processed += 1
                continue
            msg = admitted.job.msg
            assert msg is not None
            record = _Running(delivery, msg.id, bool(admitted.job.task.is_async))
            job = None if admitted.wait else executor.begin(admitted)  # (its pre-run write leaves with the turn's)
            task = self._loop_().create_task(self._execute(admitted, record, job))
            self.running[task] = record

    async def _execute(self, a: Admitted, record: _Running, job: Optional[Job]) -> None:
        """One task: its wait (a worker-scope rate limit), its body, what it ends as."""
        context.fresh_stack()
        me = asyncio.current_task()
        try:
            if job is None:
                await asyncio.sleep(a.wait)
                job = self.executor.begin(a)
                self._wake()  # (begun outside a turn: the next turn sends its pre-run write, before the body)
                await asyncio.sleep(0)
            value, error, why = await self._body(job, a, record)
            if self.lanes is not None:
                self.lanes.end(job.delivery)
            self.executor.conclude(job, a, value, error, why)
        except (KeyboardInterrupt, SystemExit):
            log.warning("a task body in %s asked the process to exit", self.name)
            self._exit_now = True
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("Redis failed while task %s ended (%s); the audit gives its message back", record.task_id,
                        exc)
            self._suspect = True
        except Exception:  # noqa: BLE001 - the Executor contains its own errors; this is a last net
            log.exception("task %s could not be concluded", record.task_id)
            self._suspect = True
        finally:
            if me is not None:
                self.running.pop(me, None)
            self.processed += 1
            self._wake()

    async def _body(self, job: Job, a: Admitted, record: _Running) -> Any:
        """(value, error, outcome of a cancel) of the body, under its time limits."""
        task, msg, run, args, kwargs = job.task, job.msg, job.run, a.args, a.kwargs
        assert msg is not None
        if task.is_async:  # (built if the body asks for it, as in the other pools)
            context.push(lambda: self.executor._request(job.delivery, msg, args, kwargs, a.hard, a.soft))
        else:  # (current in the loop's task and in the body's thread: one request for both)
            request = self.executor._request(job.delivery, msg, args, kwargs, a.hard, a.soft)
            context.push(request)
        loop = self._loop_()
        me = asyncio.current_task()
        timers = []
        if task.is_async and me is not None:
            if a.soft:
                timers.append(loop.call_later(a.soft, self._cancel, me, record, Outcome(
                    fate.FAILURE, SoftTimeLimitExceeded(f"soft time limit ({a.soft}s) exceeded"))))
            if a.hard:
                timers.append(loop.call_later(a.hard, self._cancel, me, record, Outcome(
                    fate.TIME_LIMIT, TimeLimitExceeded(f"Task {msg.task}[{msg.id}] time limit exceeded"))))
        try:
            if task.is_async:
                coro = run.body() if run is not None else (task.run(task, *args, **kwargs) if task.bind
                                                            else task.run(*args, **kwargs))
                return await coro, None, None
            if self._threads is None:
                self._threads = ThreadPoolExecutor(max_workers=min(SYNC_THREADS, self.concurrency),
                                                   thread_name_prefix="minique-sync")
            return await loop.run_in_executor(self._threads, self._in_thread, job, a, request), None, None
        except asyncio.CancelledError as exc:
            why = record.why
            if why is None:
                raise  # (the loop itself is going away)
            if why.kind == fate.FAILURE:  # the soft limit: the body saw CancelledError, the task SoftTimeLimitExceeded
                return None, why.value, None
            return None, exc, why
        except BaseException as exc:  # noqa: BLE001 - every outcome is recorded
            return None, exc, None
        finally:
            for timer in timers:
                timer.cancel()

    def _in_thread(self, job: Job, a: Admitted, request: Any) -> Any:
        """A plain def body, in the thread executor: the request current here too; update_state writes
        through the loop (the Outbox is the loop's)."""
        context.fresh_stack()
        context.set_result_writer(self._write_from_thread)
        context.push(request)
        try:
            task = job.task
            if job.run is not None:
                return job.run.body()
            return task.run(task, *a.args, **a.kwargs) if task.bind else task.run(*a.args, **a.kwargs)
        finally:
            context.pop()

    def _write_from_thread(self, queue: Any) -> None:
        self._loop_().call_soon_threadsafe(self.outbox.write_now, queue)

    def _cancel(self, task: "asyncio.Task[None]", record: _Running, why: Outcome) -> None:
        if record.why is None and not task.done():
            record.why = why
            task.cancel()

    # --- control ------------------------------------------------------------------------------------
    def reload_control(self) -> None:
        super().reload_control()
        self._terminate_named()

    def _terminate_named(self) -> None:
        """Cancel the running tasks a revoke(terminate=True) named in their lanes."""
        lanes = self.lanes
        if lanes is None or not self.running:
            return
        for task, record in list(self.running.items()):
            if record.task_id not in self.executor.revoked:
                continue
            lane = lanes.lane_of(record.delivery)
            if lane is None or lanes.terminate_target(lane) != record.task_id:
                continue
            if not record.is_async:  # (a thread cannot be stopped from outside; killing the process would
                log.warning("Task %s is a plain def task running in a thread of the asyncio pool: it cannot "
                            "be terminated, it runs to its end", record.task_id)  # end every other task too)
                lanes.set_terminate(lane, None)
                continue
            log.info("Task %s terminated (revoked)", record.task_id)
            self._cancel(task, record, Outcome(fate.TERMINATED, TaskRevokedError("terminated")))
