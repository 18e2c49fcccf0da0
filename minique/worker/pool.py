"""The worker's own pool: prefork child processes (or threads), each running a Consumer.

The parent forks the children, watches them through shared-memory slots (hard time
limits, the task a lost child held), and replaces any that exit. It never touches
the message path itself.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import AbstractSet, Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from ..signals import worker_process_init, worker_process_shutdown
from .consumer import Consumer
from .eventloop import HARD_GRACE
from .slots import SlotTable

log = logging.getLogger("minique.worker")
# (and SIGUSR2, the parent's "look at your control number now": its default action would kill the child)
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR2}


@dataclass
class Member:
    """One pool process or thread."""

    index: int
    name: str                       # its consumer name in the broker
    pid: int = 0
    thread: Optional[threading.Thread] = None
    consumer: Optional[Consumer] = None
    started: float = field(default_factory=time.time)
    kill_reason: Optional[str] = None   # set when the parent killed it (time limit, terminate)
    overdue: FrozenSet[str] = frozenset()  # the tasks past their hard time limit when it was killed for one
    retiring: bool = False              # asked to stop after its task (pool shrunk): not counted any more


class Pool:
    """Base: members indexed by slot; subclasses start and reap them."""

    kind = "base"
    hard_time_limits = False
    hard_grace = 0.0  # seconds past a task's hard time limit before the parent kills its process

    def __init__(self, make_consumer: Callable[[str, Any], Consumer], size: int, hostname: str, max_size: int,
                 lanes: int = 0):
        self.make_consumer = make_consumer
        self.size = size
        self.hostname = hostname
        self.slots = SlotTable(max_size, lanes)
        self.members: Dict[int, Member] = {}

    def new_name(self, index: int) -> str:
        return f"{self.hostname}:{index}:{uuid.uuid4().hex[:8]}"

    def start(self) -> None:
        for i in range(self.size):
            self.spawn(i)

    def spawn(self, index: int) -> Member:
        raise NotImplementedError

    def reap(self) -> List[Tuple[Any, ...]]:
        """Members that exited since the last call, as (member, description of how)."""
        raise NotImplementedError

    def request_stop(self) -> None:
        for m in self.members.values():
            self.slots[m.index].request_stop()

    def kill_all(self) -> None:
        """Cold shutdown: stop every member now."""

    def kill(self, member: Member, sig: int, reason: str) -> None:
        """Signal one member (time limit, revoke with terminate)."""

    def resize(self, size: int) -> None:
        """The number of processes wanted; `maintain()` makes it so."""
        self.size = max(1, min(size, self.slots.n))

    def maintain(self, keep: AbstractSet[int] = frozenset()) -> Tuple[int, int]:
        """Spawn or retire members until `size` of them are not retiring; returns (spawned, retired).

        New members take the lowest free slots, never one in `keep` (ended members whose slot is not
        settled yet). A member retired takes an idle one first, then the highest-numbered: it stops
        after its task, and the parent returns whatever it had fetched and not started (a warm stop)."""
        serving = [m for m in self.members.values() if not m.retiring]
        extra = len(serving) - self.size
        if extra > 0:
            serving.sort(key=lambda m: (not self.slots[m.index].tasks(), m.index), reverse=True)
            for member in serving[:extra]:
                self.retire(member)
            return 0, extra
        spawned = 0
        for index in range(self.slots.n):
            if spawned >= -extra:
                break
            if index not in self.members and index not in keep:
                self.spawn(index)
                spawned += 1
        return spawned, 0

    def retire(self, member: Member) -> None:
        """Ask one member to stop after its current task (its slot's stop flag, then its own way)."""
        member.retiring = True
        self.slots[member.index].request_stop()
        self._stop_member(member)

    def _stop_member(self, member: Member) -> None:
        """How a member is told to stop once its slot's flag is set (a signal, or a thread's flag)."""


class PreforkPool(Pool):
    """Children made with fork(); the default."""

    kind = "prefork"
    hard_time_limits = True

    def spawn(self, index: int) -> Member:
        slot = self.slots[index]
        slot.reset()
        member = Member(index, self.new_name(index))
        # Stop signals wait (blocked) until the child has its own handlers: a SIGTERM that came
        # earlier would run the parent's handler in the child and be lost.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            raise
        if pid == 0:  # the child
            code = 0
            try:
                multiprocessing.current_process().name = f"PoolWorker-{index + 1}"
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                consumer = self.make_consumer(member.name, slot)
                consumer.install_signals()
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                if worker_process_init.receivers:  # e.g. connections made before the fork made anew (Celery's)
                    worker_process_init.send(sender=None)
                consumer.reload_control()
                consumer.run()
            except BaseException:  # noqa: BLE001 - a child reports and exits, never returns into the parent
                log.exception("pool child %s crashed", member.name)
                code = 1
            finally:
                if worker_process_shutdown.receivers:
                    worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=code)
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        member.pid = pid
        self.members[index] = member
        return member

    def reap(self) -> List[Tuple[Any, ...]]:
        out = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for index, m in list(self.members.items()):
                if m.pid == pid:
                    del self.members[index]
                    how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                           else f"exit code {os.WEXITSTATUS(status)}")
                    out.append((m, how, os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0))
        return out

    def request_stop(self) -> None:
        super().request_stop()
        for m in self.members.values():
            self._stop_member(m)

    def _stop_member(self, member: Member) -> None:
        try:
            os.kill(member.pid, signal.SIGTERM)  # with the slot's flag set: finish the task, then exit
        except ProcessLookupError:
            pass

    def kill(self, member: Member, sig: int, reason: str) -> None:
        member.kill_reason = reason
        try:
            os.kill(member.pid, sig)
        except ProcessLookupError:
            pass

    def kill_all(self) -> None:
        for m in self.members.values():
            self.kill(m, signal.SIGKILL, "cold shutdown")


class AsyncioPool(PreforkPool):
    """-P asyncio: prefork processes, each running many tasks at once on an event loop (worker/eventloop.py).
    A task past its hard time limit is cancelled by its process; the parent replaces the process only when
    the task has not ended HARD_GRACE seconds later (a blocked loop)."""

    kind = "asyncio"
    hard_grace = HARD_GRACE


class ThreadPool(Pool):
    """Consumers in threads of the worker process (--pool threads|solo): no hard time limits."""

    kind = "threads"

    def spawn(self, index: int) -> Member:
        slot = self.slots[index]
        slot.reset()
        member = Member(index, self.new_name(index))
        member.consumer = self.make_consumer(member.name, slot)
        member.consumer.reload_control()
        member.thread = threading.Thread(target=member.consumer.run, name=member.name, daemon=True)
        member.thread.start()
        self.members[index] = member
        return member

    def reap(self) -> List[Tuple[Any, ...]]:
        out = []
        for index, m in list(self.members.items()):
            if m.thread is not None and not m.thread.is_alive():
                del self.members[index]
                out.append((m, "thread ended", True))
        return out

    def request_stop(self) -> None:
        super().request_stop()
        for m in self.members.values():
            self._stop_member(m)

    def _stop_member(self, member: Member) -> None:
        if member.consumer is not None:
            member.consumer.stopping = True

    def kill_all(self) -> None:
        self.request_stop()
