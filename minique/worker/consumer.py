"""One pool process's loop: fetch a few messages, run them one by one, write what they wrote.

Children consume for themselves (their own connection and prefetch); the parent
only supervises. Writes are not waited for: their replies are read with the next
fetch, which, after short tasks, goes out ahead with the batch's last task; between
short tasks the writes themselves wait (Batch.defer), so a prefetched batch of them
costs one write. See ARCHITECTURE.md for why (measured against a parent that fetches
for its children).
"""
from __future__ import annotations

import logging
import os
import resource
import signal
import time
from collections import deque
from typing import Any, Deque, List, Optional, Sequence

import redis

from .. import keys
from ..brokers import Delivery
from .execute import Batch, Executor, NotStarted

log = logging.getLogger("minique.worker")
FETCH_BLOCK = 1.0  # seconds a blocking fetch waits before the loop looks around (stop, parent alive)
SHORT_TASK = 0.005  # seconds: after a task shorter than this, fetch ahead and defer writes (see run, _fetch_ahead)
AUDIT_EVERY = 60.0  # at most this many seconds between audits of what a consumer holds (see _audit)


class _Interrupt(BaseException):
    """Breaks a blocking fetch when the process is asked to stop."""


class Consumer:
    """Fetch-run-write loop for one consumer name (one pool process or thread)."""

    def __init__(self, app: Any, name: str, queues: Sequence[str], prefetch: int, hostname: str,
                 slot: Any = None, events: Any = None, max_tasks: Optional[int] = None,
                 max_memory_kib: Optional[int] = None, use_alarm: bool = True, limiter: Any = None):
        self.app = app
        self.name = name
        self.queues = list(queues)
        self.prefetch = max(1, prefetch)
        self.slot = slot
        self.events = events
        self.max_tasks = max_tasks
        self.max_memory_kib = max_memory_kib
        self.executor = Executor(app, hostname, slot=slot, events=events, use_alarm=use_alarm, limiter=limiter)
        self.batch = Batch(app.broker_client, app.backend_client, slot)
        self.buffer: Deque[Delivery] = deque()
        self.stopping = False
        self.in_fetch = False
        self._ctl_seen = slot.ctl_seq() if slot is not None else 0
        self._suspect = False                        # a Redis failure happened since the last audit
        # an orphan waits no longer than a dead worker's messages do (visibility_timeout), at most a minute
        self._audit_every = min(AUDIT_EVERY, float(app.broker.visibility_timeout))
        self._audit_at = time.monotonic() + self._audit_every
        self.processed = 0
        self._ahead = False  # a fetch-ahead is queued or in flight (see _fetch_ahead)
        self._ahead_count = 0
        self._drained = False  # the last fetch took fewer messages than it asked for: the queues were empty

    # --- process integration ------------------------------------------------------------------------
    def install_signals(self) -> None:
        """In a pool child: SIGTERM means finish the current task, then stop; Ctrl-C is the parent's."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum: int, frame: Any) -> None:
        if self.slot is not None and not self.slot.stop_requested():
            target = self.slot.terminate_target()
            if target is not None:  # revoke(terminate=True), not a request to stop
                running = self.slot.running()[2]
                if running and running[0] == target:  # die of the signal, as the parent expects
                    signal.signal(signum, signal.SIG_DFL)
                    os.kill(os.getpid(), signum)
                return  # aimed at a task that has already ended: keep serving
        self.stopping = True
        if self.in_fetch:
            raise _Interrupt()

    # --- loop ---------------------------------------------------------------------------------------
    def run(self) -> None:
        parent = os.getppid()
        fetches = 0
        backoff = 0.05
        while not self.stopping:
            try:
                if not self.buffer:
                    if self.stopping:
                        break
                    if self._suspect or time.monotonic() >= self._audit_at:
                        self.flush()
                        self._audit()
                    self._fetch()  # also sends what the batch holds and reads every reply due
                    fetches += 1  # (getppid is a system call: looked at when idle, or every 256 fetches)
                    if (not self.buffer or not fetches % 256) and os.getppid() != parent and self.slot is not None:
                        log.warning("worker parent is gone; child %s stops", self.name)
                        break
                    self._check_control()
                    continue
                delivery = self.buffer.popleft()
                if not self.buffer and not self._ahead and not self._drained:  # (a queued one survives
                    self._fetch_ahead()                                           # a Redis failure)
                try:
                    self._check_control()  # a revocation may concern a message already prefetched
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    self.buffer.appendleft(delivery)
                    raise
                # after a short task, the pre-run write may wait to go with the next ones (unless it
                # carries a fetch-ahead): a batch of short tasks, or a lone one, costs one write
                defer = not self._ahead and self.executor.last_runtime < SHORT_TASK
                try:
                    self.executor.handle(delivery, self.batch, defer)
                except NotStarted:
                    self.buffer.appendleft(delivery)  # its body did not begin: handle it again later
                    raise
                self.processed += 1
                if self.events is not None:
                    self.events.maybe_flush(self.batch.broker)
                backoff = 0.05
                if self._recycle_due():
                    break
            except _Interrupt:
                break
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, NotStarted) as exc:
                # The batch keeps its commands and is flushed again; once Redis answers, the audit
                # gives back whatever this consumer holds that a cut-off reply left out of its hands.
                log.warning("Redis unreachable (%s); retrying in %.2fs", exc, backoff)
                self._suspect = True
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        try:
            if self.events is not None:
                self.events.flush(self.batch.broker)
            self.flush()
        except redis.exceptions.RedisError as exc:
            log.warning("could not flush on exit: %s", exc)

    def flush(self) -> None:
        self.batch.flush()

    def _audit(self) -> None:
        """Requeue what Redis says this consumer holds but it does not have in hand.

        Called with the buffer empty and the batch flushed, so every ack is in: anything still held
        came from a fetch whose reply was lost, or a task cut off by a Redis failure. Unacked, and
        renewed by the live parent, such a message would otherwise wait forever."""
        in_hand = {d.receipt for d in self.buffer}
        orphans = [d for d in self.app.broker.held_by(self.name, self.queues) if d.receipt not in in_hand]
        for d in orphans:
            self.app.broker.requeue(d, redelivered=False)
        if orphans:
            log.warning("consumer %s gave back %d message(s) a Redis failure had cut off", self.name, len(orphans))
        self._suspect = False
        self._audit_at = time.monotonic() + self._audit_every

    def _fetch_count(self, running: int = 0) -> int:
        count = self.prefetch
        if self.max_tasks:
            count = min(count, self.max_tasks - self.processed - running)
        return count

    def _fetch_ahead(self) -> None:
        """The last prefetched message is about to run: when tasks are short, its pre-run write also
        asks for the next ones, so their reply arrives while it runs instead of being waited for after
        it. (The process then holds the running message plus at most `prefetch` reserved ones; after a
        long task it does not, so a message never waits behind a long task while others are idle.)"""
        count = self._ahead_count = self._fetch_count(running=1)
        if count > 0 and not self.stopping and self.executor.last_runtime < SHORT_TASK:
            self._ahead = self.app.broker.fetch_ahead(self.batch.broker, self.name, self.queues, count,
                                                      self._got_ahead)

    def _got_ahead(self, found: List[Delivery]) -> None:
        self._ahead = False
        self._drained = len(found) < self._ahead_count
        self.buffer.extend(found)

    def _fetch(self) -> None:
        """Send the batch and take the next messages in one round trip; block only when there are none."""
        if self.stopping or self.buffer:  # (a flush before an audit may have read a fetch-ahead's reply)
            return
        broker, batch, count = self.app.broker, self.batch, max(1, self._fetch_count())
        if self._ahead:  # a fetch went out with the last task: its reply is (nearly always) here already
            batch.broker.collect()  # (the last task's results go with the next write, as the others')
            if self._ahead:  # that message never ran, so its fetch is still queued: send it now
                batch.write()
                batch.broker.collect()
            self._ahead = False
            if self.buffer:
                return
            found: List[Delivery] = []  # it found nothing: wait for messages
        elif self._drained:  # the last fetch emptied the queues: straight to the blocking wait
            found = []
        else:
            batch.settle_results()
            found = broker.fetch(self.name, self.queues, count, 0, pipe=batch.broker)
            batch.sent()
            self._drained = len(found) < count
        if not found:
            if self.events is not None:
                self.events.flush(batch.broker)
            batch.flush()  # neither the events nor what the replies queued (a chord's callback) wait with us
            self.in_fetch = True  # only the blocking wait may be interrupted: the batch is settled
            try:
                if not self.stopping:
                    found = broker.wait(self.name, self.queues, count, FETCH_BLOCK)
                    self._drained = len(found) < count
            finally:
                self.in_fetch = False
        self.buffer.extend(found)

    def _recycle_due(self) -> bool:
        if self.max_tasks and self.processed >= self.max_tasks:
            log.info("child %s recycles after %d tasks", self.name, self.processed)
            return True
        if self.max_memory_kib and self.processed:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
            if rss > self.max_memory_kib:
                log.info("child %s recycles at %d KiB (limit %d KiB)", self.name, rss, self.max_memory_kib)
                return True
        return False

    def _check_control(self) -> None:
        """The parent bumps the slot's control number when revocations arrive: reload them."""
        if self.slot is None:
            return
        seq = self.slot.ctl_seq()
        if seq != self._ctl_seen:
            self._ctl_seen = seq
            self.load_revoked()

    def load_revoked(self) -> None:
        self.executor.revoked = load_revoked(self.app)

    def held(self) -> List[Delivery]:
        return list(self.buffer)


def load_revoked(app: Any) -> set:
    """Ids revoked and not yet expired (every worker reads the same set, also ones started later)."""
    raw = app.broker_client.zrangebyscore(keys.REVOKED, time.time(), "+inf")
    return {r.decode() for r in raw}
