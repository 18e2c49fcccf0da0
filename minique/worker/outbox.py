"""The Outbox: when a pool process's writes reach Redis, and how its next messages are fetched.

Every write of a pool process goes through here: results, follow-up messages, acks,
requeues, dead letters and event batches are queued in two pipes (`broker`, and `backend`
for the result store; one and the same when both live in one Redis), and the Outbox alone
decides when they leave:

    queued ──before_body()──▶ written ──(next fetch / flush)──▶ answered
       │                         ▲
       └─ deferred ──(window over: the next before_body, or SIGALRM while a body runs)

- before_body(): the pre-run write. The running task's early ack and the previous tasks'
  results leave before the body runs, without waiting for the replies (they are read with
  the next fetch). Between short tasks (< SHORT_TASK) of one prefetched batch the write is
  *deferred*: it waits, at most `worker_early_ack_window` (SIGALRM writes it while a body
  runs), to leave with the next ones, so a batch of short tasks costs one write. A deferral
  needs room in the slot, which lists every task started since the last write, so that the
  parent of a lost process acks them (worker/main.py) and nothing it started runs again.
- apply(): a message's own fate (ack / requeue / dead letter / park / resend) is queued
  behind the result and follow-ups already queued for it; acks are gathered into one XACK
  and one XDEL per stream, emitted last at the write. Results therefore precede acks on one
  connection (Redis runs them in order); with a separate result store its replies are read
  before the broker write (`_settle_results`).
- fetch(): a round trip that also sends what is queued; it blocks only when the queues are
  empty. When the last fetched message is about to run and tasks are short, its pre-run
  write carries the next fetch (`next()`: fetch-ahead), whose reply arrives while it runs.
- flush(): everything written and answered, including what reply handlers queued (the
  callback a chord's last join fires).
- write_now(): a write from inside a running body (update_state) leaves at once, with (and
  behind) whatever was queued or deferred; SIGALRM waits until it is out.
- events: a body that runs EVENTS_LATE seconds while the process's event batch (its task-started
  above all) waits is interrupted by SIGALRM, which writes the batch (so a long task that follows
  short ones is seen running); armed only when the pre-run write was not deferred, or when the
  deferred write's alarm finds the batch still waiting, and disarmed when the body returns.
Commands stay in the pipes until answered: a lost connection re-sends them (pipe.py).
"""
from __future__ import annotations

import logging
import signal
import time
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Sequence, Tuple

import redis

from ..brokers import Delivery
from ..pipe import fast_pipeline, is_cluster
from ..settle import Settlement

log = logging.getLogger("minique.worker")
SHORT_TASK = 0.005  # seconds: after a task shorter than this, fetch ahead and defer writes
FETCH_BLOCK = 1.0   # seconds a blocking fetch waits before the loop looks around (stop, parent alive)
EVENTS_LATE = 0.5   # seconds into a body after which the waiting event batch is written (SIGALRM)
_CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class NotStarted(Exception):
    """Redis failed the write that comes before a task's body: the task did not start.

    The consumer keeps the delivery and handles it again once Redis answers."""


class Outbox:
    """One pool process's writes and fetches (see the module docstring for the states)."""

    def __init__(self, app: Any, consumer: str, queues: Sequence[str], slot: Any = None, window: float = 0.0,
                 use_alarm: bool = True):
        self.app = app
        self.consumer = consumer
        self.queues = list(queues)
        self.slot = slot
        self.window = window if use_alarm else 0.0
        self.use_alarm = use_alarm
        self.events: Any = None        # the process's events.Events (set by the consumer): see on_alarm
        self._events_alarm = False     # SIGALRM armed to write the event batch while a body runs
        self.broker = fast_pipeline(app.broker_client)  # (on a cluster: one connection per node)
        if app.broker.wait_for_replicas and not is_cluster(app.broker_client):  # every write confirmed (pipe.py)
            self.broker.confirm(app.broker.wait_for_replicas, app.broker.wait_timeout)
        self.backend = self.broker if app.backend_client is app.broker_client else fast_pipeline(app.backend_client)
        self.buffer: Deque[Delivery] = deque()  # fetched, not yet handled
        self.fetched_at = 0.0          # when the fetch that filled the buffer was sent (monotonic; see _took)
        self.last_runtime = float("inf")  # seconds the last body took (none yet: unknown, long)
        self.stopping = False
        self.in_wait = False           # blocked in the fetch that may be interrupted (nothing left unsent)
        self.woken = False             # the parent signalled news (SIGUSR2): do not begin a blocking wait
        self._deferred_at: Optional[float] = None  # when a pre-run write was first left for later
        self._slot_room = True         # the slot can list one more finished, unwritten task
        self._ahead = False            # a fetch-ahead is queued or in flight
        self._ahead_count = 0
        self._ahead_at = 0.0           # when the fetch-ahead was queued
        self._drained = False          # the last fetch took fewer than it asked for: the queues were empty

    # --- around a task body -------------------------------------------------------------------------
    def before_body(self, soft_limit: bool) -> None:
        """The pre-run write, or its deferral (never with a soft time limit: SIGALRM is the limit's)."""
        if (not self._ahead and self.last_runtime < SHORT_TASK and self.window > 0 and not soft_limit
                and self._slot_room and self._defer()):
            return
        try:
            self.write()
        except _CONNECTION_ERRORS as exc:
            raise NotStarted(str(exc)) from exc
        events = self.events
        if events is not None and self.use_alarm and not soft_limit and events.unsent():
            self._events_alarm = True  # (SIGALRM is the soft limit's when there is one)
            signal.setitimer(signal.ITIMER_REAL, EVENTS_LATE)

    def end(self, runtime: float) -> None:
        """The body returned: the slot lists the task as finished until its writes leave."""
        self.last_runtime = runtime
        if self._events_alarm:
            self._events_alarm = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        if self.slot is not None:
            self._slot_room = self.slot.end()

    def _defer(self) -> bool:
        now = time.monotonic()
        if self._deferred_at is None:
            self._deferred_at = now
            signal.setitimer(signal.ITIMER_REAL, self.window)
            return True
        return now - self._deferred_at < self.window

    def on_alarm(self) -> None:
        """SIGALRM while a body runs (the pipes' connection is idle then): send a deferred write; and
        once the body has run EVENTS_LATE seconds, the event batch that waits (nothing in the body
        adds events: the batch is whole)."""
        events = self.events
        if self._deferred_at is not None:
            try:
                self.write()
            except Exception as exc:  # noqa: BLE001 - kept, and written again with the next write
                log.warning("could not write deferred acks while a task runs: %s", exc)
            if events is not None and events.unsent():
                self._events_alarm = True
                signal.setitimer(signal.ITIMER_REAL, max(0.001, EVENTS_LATE - self.window))
        elif self._events_alarm:
            self._events_alarm = False
            try:
                events.flush(self.broker)
                self.write()
            except Exception as exc:  # noqa: BLE001 - kept, and written again with the next write
                log.warning("could not write events while a task runs: %s", exc)

    def write_now(self, queue: Callable[[Any], None]) -> None:
        """A write from inside a running body (update_state), sent at once: `queue(pipe)` adds its
        commands to the result store's pipe, behind what is queued there already, and everything
        queued leaves now (a deferred pre-run write with it: a task's STARTED never lands after its
        PROGRESS, and acks still leave last, behind the results). SIGALRM is held off meanwhile: a
        deferred write (on_alarm) or a soft time limit must not cut into a write half-sent; one
        that came due is handled as soon as the write is out. The replies are read with the next
        fetch or flush, as those of every write."""
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            queue(self.backend)
            self.write()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    # --- a message's fate ---------------------------------------------------------------------------
    def apply(self, delivery: Delivery, settlement: Settlement, task_id: Optional[str], hostname: str) -> None:
        """Queue the message's own fate, behind what was queued for it (its result, its follow-ups).
        The ack is gathered, and comes last: nothing that can fail follows it (see mark/rollback)."""
        broker = self.app.broker
        if settlement.dead_letter is not None:
            broker.dead_letter(self.broker, delivery.data, settlement.dead_letter, delivery.queue, task_id, hostname)
        if settlement.resend:
            broker.send(self.broker, delivery.queue, delivery.priority, delivery.data)
        if settlement.requeue:
            broker.requeue(delivery, redelivered=True, pipe=self.broker)
        elif settlement.ack:  # (an ack of a message acked before its body ran changes nothing)
            broker.ack(self.broker, delivery)

    def mark(self) -> Tuple[Any, ...]:
        """Where the pipes stand, before a message's writes are queued (see rollback)."""
        return self.broker.mark(), self.backend.mark()

    def rollback(self, mark: Tuple[Any, ...]) -> None:
        """Take back what was queued since `mark` (handling one message failed half-way)."""
        self.broker.rollback(mark[0])
        if self.backend is not self.broker:
            self.backend.rollback(mark[1])

    # --- writing ------------------------------------------------------------------------------------
    def write(self) -> None:
        """Send what is queued; the replies are read at the next fetch or flush."""
        self._settle_results()
        self.broker.write()
        self._sent()

    def flush(self) -> None:
        """Send what is queued and wait until Redis has answered everything sent so far (and what
        handling those replies queued: a chord's callback)."""
        while True:
            self._settle_results()
            self.broker.execute()
            if not len(self.broker) and not len(self.backend):
                break
        self._sent()

    def _settle_results(self) -> None:
        """Results first: an ack must never reach Redis before the result it stands for. On one
        connection Redis runs commands in order; across two, the results must be answered first."""
        if self.backend is not self.broker:
            self.backend.execute()

    def _sent(self) -> None:
        """Everything queued is written: the finished tasks are off the slot, nothing is deferred."""
        if self._deferred_at is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._deferred_at = None
        if self.slot is not None:
            self.slot.flushed()

    def reconnect(self) -> None:
        """Leave the pipes' connections (a Sentinel master moved: worker/follow.py); what they have not
        answered is written again on the next ones."""
        self.broker.reconnect()
        if self.backend is not self.broker:
            self.backend.reconnect()

    def discard(self) -> None:
        self.broker.reset()
        if self.backend is not self.broker:
            self.backend.reset()

    # --- fetching -----------------------------------------------------------------------------------
    def next(self, count: Callable[[], int]) -> Delivery:
        """The next fetched message. When it is the last one and tasks are short, its pre-run write
        also asks for up to `count()` more, so their reply arrives while it runs. (The process then
        holds the running message plus at most that many reserved ones; after a long task it does
        not, so a message never waits behind a long task while other processes are idle.)"""
        delivery = self.buffer.popleft()
        if (not self.buffer and not self._ahead and not self._drained and not self.stopping
                and self.last_runtime < SHORT_TASK):
            n = count()
            if n > 0:
                self._ahead_count = n
                self._ahead_at = time.monotonic()
                self._ahead = self.app.broker.fetch_ahead(self.broker, self.consumer, self.queues, n,
                                                          self._got_ahead)
        return delivery

    def _got_ahead(self, found: List[Delivery]) -> None:
        self._ahead = False
        self._drained = len(found) < self._ahead_count
        self._took(found, self._ahead_at)

    def _took(self, found: List[Delivery], asked_at: float) -> None:
        """Messages into the buffer. Their age counts from when the fetch was sent, not from when its
        reply came: a reply held up (a network partition, a long task before a fetch-ahead's reply is
        read) may bring messages that sat in this consumer's hands, unrenewed, long enough to be
        redelivered elsewhere, and the consumer looks them up before running them (Consumer._stale_after)."""
        if found:
            if not self.buffer:  # (the age of the buffer is that of its oldest message)
                self.fetched_at = asked_at
            self.buffer.extend(found)

    def take(self, count: int) -> List[Delivery]:
        """A fetch that never blocks (the asyncio pool's): what is queued leaves with it; up to `count`
        messages, or none."""
        self._settle_results()
        found: List[Delivery] = self.app.broker.fetch(self.consumer, self.queues, count, 0, pipe=self.broker)
        self._sent()
        return found

    def fetch(self, count: int, on_idle: Any = None) -> None:
        """Send what is queued and take up to `count` messages into the buffer in one round trip;
        block (FETCH_BLOCK at most) only when there are none. `on_idle()` runs before blocking."""
        if self.stopping or self.buffer:  # (a flush before an audit may have read a fetch-ahead's reply)
            return
        broker, count = self.app.broker, max(1, count)
        asked_at = time.monotonic()
        if self._ahead:  # a fetch went out with the last task: its reply is (nearly always) here already
            self.broker.collect()  # (the last task's results go with the next write, as the others')
            if self._ahead:  # that message never ran, so its fetch is still queued: send it now
                self.write()
                self.broker.collect()
            self._ahead = False
            if self.buffer:
                return
            found: List[Delivery] = []  # it found nothing: wait for messages
        elif self._drained:  # the last fetch emptied the queues: straight to the blocking wait
            found = []
        else:
            self._settle_results()
            found = broker.fetch(self.consumer, self.queues, count, 0, pipe=self.broker)
            self._sent()
            self._drained = len(found) < count
        if not found:
            if on_idle is not None:
                on_idle()
            self.flush()  # neither the events nor what the replies queued (a chord's callback) wait with us
            self.in_wait = True  # only the blocking wait may be interrupted: everything is answered
            try:
                if not self.stopping and not self.woken:
                    asked_at = time.monotonic()
                    found = broker.wait(self.consumer, self.queues, count, FETCH_BLOCK)
                    self._drained = len(found) < count
            finally:
                self.in_wait = False
        self._took(found, asked_at)
