"""One pool process's loop: take the next message, handle it, look around; nothing else.

Children consume for themselves (their own connection and prefetch); the parent only
supervises (see ARCHITECTURE.md for why, measured). What a message becomes is decided in
execute.py (through settle.py); when writes and fetches reach Redis, in outbox.py.
"""
from __future__ import annotations

import logging
import os
import resource
import signal
import time
from typing import Any, FrozenSet, List, Optional, Sequence, Set

import redis

from .. import context, keys
from ..brokers import Delivery
from ..logs import Once
from .execute import Executor
from .outbox import NotStarted, Outbox

log = logging.getLogger("minique.worker")
AUDIT_EVERY = 60.0  # at most this many seconds between audits of what a consumer holds (see _audit)
PAUSED_NAP = 0.2    # seconds a process whose queues are all paused waits between looks at its control number


class _Interrupt(BaseException):
    """Breaks a blocking fetch when the process is asked to stop."""


class _Wake(BaseException):
    """Breaks a blocking fetch when the parent has news (a queue paused): the fetch starts again."""


class Consumer:
    """Fetch-run loop for one consumer name (one pool process or thread)."""

    def __init__(self, app: Any, name: str, queues: Sequence[str], prefetch: int, hostname: str,
                 slot: Any = None, events: Any = None, max_tasks: Optional[int] = None,
                 max_memory_kib: Optional[int] = None, use_alarm: bool = True, limiter: Any = None,
                 fetch_ahead: bool = True, follow: Any = None):
        self.app = app
        self.name = name
        self.queues = list(queues)
        self.prefetch = max(1, prefetch)
        self.slot = slot
        self.events = events
        self.max_tasks = max_tasks
        self.max_memory_kib = max_memory_kib
        self.outbox = Outbox(app, name, queues, slot, float(app.conf.worker_early_ack_window or 0), use_alarm)
        self.executor = Executor(app, hostname, self.outbox, events=events, limiter=limiter, use_alarm=use_alarm)
        self.executor.consumer = self  # the sender of task_received, task_rejected, task_unknown (as Celery)
        self.outbox.events = events if events is not None and events.send else None
        self.stopping = False
        self._ctl_seen = slot.ctl_seq() if slot is not None else 0
        self._suspect = False                        # a Redis failure happened since the last audit
        # an orphan waits no longer than a dead worker's messages do (visibility_timeout), at most a minute
        self._audit_every = min(AUDIT_EVERY, float(app.broker.visibility_timeout))
        self._audit_at = time.monotonic() + self._audit_every
        # past this age a fetched message may have been redelivered elsewhere, were this process not
        # renewing its claims (frozen): it is looked up before it runs (see _keep_what_is_ours)
        self._stale_after = float(app.broker.visibility_timeout) / 2
        self.fetch_ahead = fetch_ahead  # False (-O fair): take a message only when free, never one ahead
        self.processed = 0
        self.paused: FrozenSet[Any] = frozenset()         # this consumer's queues that are paused (load_paused)
        self._report = Once(log)                     # errors of the loop itself, logged once per kind
        self.follow = follow                         # worker/follow.MasterWatch (Sentinel only), else None
        self._follow_seen = follow.generation() if follow is not None else 0

    # --- process integration ------------------------------------------------------------------------
    def install_signals(self) -> None:
        """In a pool child: SIGTERM means finish the current task, then stop; Ctrl-C is the parent's."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGUSR2, self._on_wake)

    def _on_wake(self, signum: int, frame: Any) -> None:
        """SIGUSR2 from the parent, after it bumped the control number: a blocking wait would still read
        the queues just paused, so it ends (or does not begin) and the loop looks again."""
        self.outbox.woken = True
        if self.outbox.in_wait:
            raise _Wake()

    def _on_term(self, signum: int, frame: Any) -> None:
        if self.slot is not None and not self.slot.stop_requested():
            target = self.slot.terminate_target()
            if target is not None:  # revoke(terminate=True), not a request to stop
                running = self.slot.running()[2]
                if running and running.task_id == target:  # die of the signal, as the parent expects
                    signal.signal(signum, signal.SIG_DFL)
                    os.kill(os.getpid(), signum)
                return  # aimed at a task that has already ended: keep serving
        self.stopping = self.outbox.stopping = True
        if self.outbox.in_wait:
            raise _Interrupt()

    # --- loop ---------------------------------------------------------------------------------------
    def run(self) -> None:
        parent = os.getppid()
        outbox = self.outbox
        context.set_result_writer(outbox.write_now)  # update_state from this thread's task bodies
        fetches = 0
        backoff = 0.05
        while not self.stopping:
            try:
                if not outbox.buffer and not outbox.queues:  # every queue of this worker is paused
                    self._on_idle()
                    outbox.flush()
                    time.sleep(PAUSED_NAP)  # (the parent tells of a resume through the control number)
                    self._check_control()
                    continue
                if not outbox.buffer:
                    if outbox.woken:  # (SIGUSR2: the queues to fetch from may have changed)
                        outbox.woken = False
                        self._check_control()
                    if self._suspect or time.monotonic() >= self._audit_at:
                        outbox.flush()
                        self._audit()
                    outbox.fetch(self._fetch_count(), self._on_idle)  # also sends what is queued
                    fetches += 1  # (getppid is a system call: looked at when idle, or every 256 fetches)
                    if (not outbox.buffer or not fetches % 256) and os.getppid() != parent and self.slot is not None:
                        log.warning("worker parent is gone; child %s stops", self.name)
                        break
                    self._check_control()
                    continue
                if time.monotonic() - outbox.fetched_at > self._stale_after:
                    self._keep_what_is_ours()  # a long task, or this process was frozen (SIGSTOP, a paused VM)
                    continue
                delivery = outbox.next(self._ahead_count)
                try:
                    self._check_control()  # a revocation may concern a message already prefetched
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    outbox.buffer.appendleft(delivery)
                    raise
                if self.paused and delivery.queue in self.paused:  # reserved before its queue was paused:
                    self.app.broker.requeue(delivery, redelivered=False, pipe=outbox.broker)  # given back
                    continue
                try:
                    self.executor.handle(delivery)
                except NotStarted:
                    outbox.buffer.appendleft(delivery)  # its body did not begin: handle it again later
                    raise
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    raise
                except Exception:  # noqa: BLE001 - even the dead letter failed: the audit gives it back
                    log.exception("could not handle a message from %s; it stays held until the next audit",
                                  delivery.queue)
                    self._suspect = True
                self.processed += 1
                if self.events is not None:
                    self.events.maybe_flush(outbox.broker)
                backoff = 0.05
                if self._recycle_due():
                    break
            except _Interrupt:
                break
            except _Wake:  # the cut-off wait's reply may have taken messages: the audit gives them back
                self._suspect = True
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, NotStarted) as exc:
                # The Outbox keeps its commands and sends them again; once Redis answers, the audit
                # gives back whatever this consumer holds that a cut-off reply left out of its hands.
                log.warning("Redis unreachable (%s); retrying in %.2fs", exc, backoff)
                self._suspect = True
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception as exc:  # noqa: BLE001 - one turn's error (a key of the wrong type...) never ends it
                # as above: whatever this consumer holds and no longer has in hand, the audit gives back
                self._report(("loop", type(exc).__name__), "consumer %s: a turn of its loop failed: %r; retrying "
                             "in %.2fs", self.name, exc, backoff, exc_info=True)
                self._suspect = True
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        try:
            self._on_idle()
            outbox.flush()
        except redis.exceptions.RedisError as exc:
            log.warning("could not flush on exit: %s", exc)

    def _on_idle(self) -> None:
        """Before the process blocks (or stops): the events it holds leave too, and the next task's
        task-started will leave before its body (a task sent to an idle worker is seen at once)."""
        if self.events is not None:
            self.events.flush(self.outbox.broker)
            self.events.idle = True

    def _audit(self) -> None:
        """Requeue what Redis says this consumer holds but it does not have in hand.

        Called with the buffer empty and the Outbox flushed, so every ack is in: anything still held
        came from a fetch whose reply was lost, or a task cut off by a Redis failure. Unacked, and
        renewed by the live parent, such a message would otherwise wait forever."""
        in_hand = self._in_hand()
        orphans = [d for d in self.app.broker.held_by(self.name, self.queues) if d.receipt not in in_hand]
        for d in orphans:
            self.app.broker.requeue(d, redelivered=False)
        if orphans:
            log.warning("consumer %s gave back %d message(s) a Redis failure had cut off", self.name, len(orphans))
        self._suspect = False
        self._audit_at = time.monotonic() + self._audit_every

    def _in_hand(self) -> Set[Any]:
        """The receipts of what this consumer holds and will handle (the audit leaves them)."""
        return {d.receipt for d in self.outbox.buffer}

    def _keep_what_is_ours(self) -> None:
        """Drop the fetched messages this consumer no longer holds in Redis (see _still_held). Only for an
        old buffer: a freeze or a network partition longer than the visibility timeout, or a fetch reply
        held up that long."""
        outbox = self.outbox
        renewed_at = time.monotonic()
        kept = self._still_held(list(outbox.buffer))
        outbox.buffer.clear()
        outbox.fetched_at = renewed_at
        outbox.buffer.extend(kept)

    def _still_held(self, found: List[Delivery]) -> List[Delivery]:
        """Of `found`, the messages this consumer still holds in Redis. Unrenewed longer than the visibility
        timeout, the others were redelivered by another worker's reaper, and running them here too would
        run them twice (even with early acks). The claims are renewed first, so what is kept stays this
        consumer's for another visibility timeout (the reaper cannot take it between the look-up and the
        run). One flush and two round trips: only for messages old enough to be in doubt."""
        self.outbox.flush()
        self.app.broker.extend(self.name, self.queues)
        held = {d.receipt for d in self.app.broker.held_by(self.name, self.queues)}
        kept = [d for d in found if d.receipt in held]
        if len(kept) < len(found):
            log.warning("consumer %s dropped %d fetched message(s) redelivered elsewhere meanwhile (not renewed "
                        "for longer than the visibility timeout: a freeze, a partition, a late fetch reply)",
                        self.name, len(found) - len(kept))
        return kept

    def _fetch_count(self, running: int = 0) -> int:
        count = self.prefetch
        if self.max_tasks:
            count = min(count, self.max_tasks - self.processed - running)
        return count

    def _ahead_count(self) -> int:
        """How many to fetch ahead while the last fetched message runs."""
        return self._fetch_count(running=1) if self.fetch_ahead else 0

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
        """The parent bumps the slot's control number when revocations arrive, queues are paused or
        resumed, or a Sentinel master moved: reload them (after leaving the old master)."""
        if self.slot is None:
            return
        seq = self.slot.ctl_seq()
        if seq != self._ctl_seen:
            self._ctl_seen = seq
            if self.follow is not None and self.follow.generation() != self._follow_seen:
                self._follow()
            self.reload_control()

    def _follow(self) -> None:
        """The parent saw a Sentinel master move (worker/follow.py): leave the old one now. The pipes keep
        what it did not answer and send it to the new master; the next audit gives back what a cut-off
        reply left held there."""
        self._follow_seen = self.follow.generation()
        self.outbox.reconnect()
        self.follow.leave(self.app)
        self._suspect = True

    def reload_control(self) -> None:
        self.load_revoked()
        self.load_paused()

    def load_revoked(self) -> None:
        self.executor.revoked = load_revoked(self.app)

    def load_paused(self) -> None:
        """Fetch only from the queues not paused (what this process holds stays in hand and runs)."""
        paused = set(self.app.control.paused())
        self.paused = frozenset(q for q in self.queues if q in paused)
        self.outbox.queues = [q for q in self.queues if q not in paused]


def load_revoked(app: Any) -> Set[Any]:
    """Ids revoked and not yet expired (every worker reads the same set, also ones started later)."""
    return revoked_ids(app.broker_client.zrangebyscore(keys.REVOKED, time.time(), "+inf"))


def revoked_ids(raw: Any) -> Set[Any]:
    """The members of minique:revoked as task ids; one that is not UTF-8 is no id a message can carry
    (message ids are msgpack strings): skipped, never a reason to fail."""
    out = set()
    for r in raw:
        try:
            out.add(r.decode())
        except UnicodeDecodeError:
            continue
    return out
