"""What becomes of a message: the one decision, as a pure function (no I/O).

`settle(outcome, policy, deliveries)` says, for every way a delivery can end, whether its
message is acked, requeued (counted as a delivery) or dead-lettered with a reason, which
state is stored for the task, which follow-ups are sent, and which event is emitted. The
pool process uses it after a task body and for messages that never reach one; the worker
parent uses it for tasks lost with their process, killed at their hard time limit,
terminated by a revoke, or interrupted by a cold shutdown. The worker then writes what it
says (worker/outbox.py decides when those writes reach Redis).

Celery's rules (celery/worker/request.py), with minique's deliberate differences marked:
- early ack (acks_late off): the message left the queue before the body ran; nothing
  after the body acks it again.
- acks_late: success, retry and Ignore ack; a failure acks when
  `acks_on_failure_or_timeout` (the default) and otherwise leaves the queue as a reject
  without requeue would, which here means the dead-letter stream with the failure as
  its reason; a task lost with its process is requeued when `reject_on_worker_lost`; a
  hard time limit with `acks_on_failure_or_timeout` off is requeued.
- minique: every requeue counts a delivery, and past `task_max_deliveries` the message
  goes to the dead letters with a FAILURE stored (Celery requeues forever).
- minique: a message that cannot be run at all (undecodable, unknown task, forged,
  over-size, a malformed record) goes to the dead letters, never silently away; so does one
  refused by replay protection (stale, or replayed), which like a forged one writes no result.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

from . import states
from .exceptions import TaskRevokedError, WorkerLostError

# --- outcomes: how a delivery ended -------------------------------------------------------------
# Before any body ran (the message is still held, whatever acks_late says):
UNDECODABLE = "undecodable"          # not a minique message, or a field of the wrong type
MALFORMED = "malformed"              # the broker's record itself is broken (no message field, bad count)
OVERSIZE = "oversize"                # over task_max_message_size
FORGED = "forged"                    # unsigned or badly signed, with security_key set
STALE = "stale"                      # older than security_message_max_age (replay protection)
REPLAYED = "replayed"                # this delivery of it started already (its once-only mark is taken)
UNKNOWN_TASK = "unknown-task"        # no task of that name is registered here
BAD_CONTENT = "bad-content"          # the body's content type is not accepted, or it does not decode
TOO_MANY_DELIVERIES = "too-many-deliveries"  # delivered more often than task_max_deliveries allows
REVOKED = "revoked"
EXPIRED = "expired"
EARLY = "early"                      # its ETA is still ahead (a clock step): parked again
THROTTLED = "throttled"              # over its cluster-wide rate limit: parked until its reserved start
CONCURRENCY = "concurrency"          # every run slot of its concurrency limit taken: parked (by the acquire)
# After the body ran (in the pool process):
SUCCESS = "success"
FAILURE = "failure"                  # an exception (a soft time limit, an unencodable result too)
BAD_ARGUMENTS = "bad-arguments"      # called with arguments its signature does not take
RETRY = "retry"                      # self.retry() or autoretry_for: a new message, retries + 1
REPLACE = "replace"                  # self.replace(): a new canvas takes the task's place
REJECT = "reject"                    # raise Reject(requeue=...)
IGNORE = "ignore"                    # raise Ignore()
INTERNAL = "internal"                # minique itself failed handling this message (a bug, or a bad follow-up)
# Decided by the worker parent, the pool process being gone:
WORKER_LOST = "worker-lost"          # the process died while it ran the task (or before its writes left)
TIME_LIMIT = "time-limit"            # killed at the hard time limit
TERMINATED = "terminated"            # revoke(terminate=True)
SHUTDOWN = "shutdown"                # cut off by a cold shutdown

PRE_RUN = frozenset({UNDECODABLE, MALFORMED, OVERSIZE, FORGED, STALE, REPLAYED, UNKNOWN_TASK, BAD_CONTENT,
                     TOO_MANY_DELIVERIES, REVOKED, EXPIRED, EARLY, THROTTLED, CONCURRENCY})
# the message cannot (or must not) run: it goes to the dead letters whatever acks_late says
_DEAD = frozenset({UNDECODABLE, MALFORMED, OVERSIZE, FORGED, STALE, REPLAYED, UNKNOWN_TASK, BAD_CONTENT,
                   TOO_MANY_DELIVERIES, INTERNAL})
# ...and must not write anyone's result nor tell anything downstream: its id is unverified (FORGED), or
# the task it names ran or may have run from another copy whose result and follow-ups stand (replays)
_SILENT = frozenset({FORGED, STALE, REPLAYED})
_FAILED = frozenset({FAILURE, BAD_ARGUMENTS})

# What a settlement tells the canvas (links and chain, or errbacks and the failure of what waits)
FOLLOW_SUCCESS = "success"
FOLLOW_FAILURE = "failure"
FOLLOW_REPLACE = "replace"


class Outcome(NamedTuple):
    """How one delivery ended. `value`: the return value (SUCCESS), the exception (failures,
    RETRY, REJECT, REPLACE), or an exception describing why it could not run (pre-run)."""

    kind: str
    value: Any = None
    reason: str = ""              # pre-run and INTERNAL: said in the dead letter and the log


class Policy(NamedTuple):
    """The task's and app's settings that decide a message's fate (Celery's names)."""

    acks_late: bool = False
    acks_on_failure_or_timeout: bool = True
    reject_on_worker_lost: bool = False
    max_deliveries: int = 10
    ignore_result: bool = False
    store_errors_even_if_ignored: bool = False


class Settlement(NamedTuple):
    """What to write for one delivery, in this order: the result, the follow-ups, then the
    message's own fate (ack / requeue / dead letter), so an ack never precedes what it stands for."""

    ack: bool = False                   # take the message out of its queue
    requeue: bool = False               # put it back at the end of its queue, one more delivery counted
    resend: bool = False                # send its bytes again as a new message (already acked: Reject(requeue))
    park: bool = False                  # send it again as it is (its ETA parks it in the delayed set), then ack
    dead_letter: Optional[str] = None   # reason: a copy goes to the dead-letter stream (ack is then set too)
    state: Optional[str] = None         # result state to store for the task, if any
    result: Any = None                  # stored with `state` instead of the outcome's value, if set
    retry: bool = False                 # send the retry message (retries + 1, due when the Retry says)
    follow: Optional[str] = None        # FOLLOW_*: what the canvas is told
    event: Optional[str] = None         # the task event to emit


def releases(kind: str, s: Settlement) -> bool:
    """Whether the task's run is over for good after this settlement, so what it holds (a unique key) is
    released: not when it runs again (retry, requeue, resend, parked), nor for a message whose id is
    unverified or whose original may still run (forged, stale, replayed)."""
    return kind not in _SILENT and kind != CONCURRENCY and not (s.retry or s.requeue or s.resend or s.park)


def settle(outcome: Outcome, policy: Policy, deliveries: int = 0) -> Settlement:
    """The fate of a delivery that ended with `outcome`; `deliveries`: its earlier deliveries."""
    kind, value = outcome.kind, outcome.value
    late = policy.acks_late
    if kind in _DEAD:
        # FORGED, STALE and REPLAYED store nothing (_SILENT); what waits on the others fails too
        # (INTERNAL excepted: the follow-ups may be what failed)
        silent = kind in _SILENT
        return Settlement(ack=True, dead_letter=outcome.reason or kind, state=None if silent else states.FAILURE,
                          follow=None if silent or kind == INTERNAL else FOLLOW_FAILURE, event="task-rejected")
    if kind == REVOKED or kind == EXPIRED:
        return Settlement(ack=True, state=states.REVOKED, result=None if value is not None else TaskRevokedError(kind),
                          follow=FOLLOW_FAILURE, event="task-revoked")
    if kind == EARLY or kind == THROTTLED:
        return Settlement(ack=True, park=True)
    if kind == CONCURRENCY:  # parked already, with its place among those waiting for a slot
        return Settlement(ack=True, park=False, follow=None)
    if kind == SUCCESS:
        return Settlement(ack=late, state=None if policy.ignore_result else states.SUCCESS,
                          follow=FOLLOW_SUCCESS, event="task-succeeded")
    if kind == RETRY:  # the state stored is the exception that caused the retry, when there is one
        cause = getattr(value, "exc", None)
        return Settlement(ack=late, state=None if policy.ignore_result else states.RETRY, result=cause,
                          retry=True, event="task-retried")
    if kind == REPLACE:
        return Settlement(ack=late, follow=FOLLOW_REPLACE)
    if kind == IGNORE:  # Celery acknowledges it and stores nothing
        return Settlement(ack=late)
    if kind == REJECT:
        reason = f"rejected by the task: {getattr(value, 'reason', None)}"
        if getattr(value, "requeue", False):
            if not late:  # already acked before the body ran: only a new copy can go back
                return Settlement(resend=True, event="task-rejected")
            return _requeue(policy, deliveries, value)
        return Settlement(ack=True, dead_letter=reason, state=states.REJECTED, follow=FOLLOW_FAILURE,
                          event="task-rejected")
    if kind in _FAILED:
        return _failed(policy, deliveries, value, requeue=False, reason=outcome.reason)
    if kind == TIME_LIMIT:
        return _failed(policy, deliveries, value, requeue=not policy.acks_on_failure_or_timeout)
    if kind == WORKER_LOST:
        return _failed(policy, deliveries, value, requeue=policy.reject_on_worker_lost)
    if kind == SHUTDOWN:  # minique: a cold shutdown is no failure of the task; acks_late brings it back
        return _requeue(policy, deliveries, value) if late else _failed(policy, deliveries, value, requeue=False)
    if kind == TERMINATED:  # Celery acks a terminated task's message and records REVOKED
        return Settlement(ack=late, state=states.REVOKED, follow=FOLLOW_FAILURE, event="task-revoked")
    raise ValueError(f"unknown outcome {kind!r}")


def _failed(policy: Policy, deliveries: int, exc: Any, requeue: bool, reason: str = "") -> Settlement:
    """A task that raised (or was lost): FAILURE stored, and what waits on it fails too. With acks_late
    its message is requeued, acked, or else dead-lettered (Celery: rejected without requeue)."""
    if policy.acks_late and requeue:
        return _requeue(policy, deliveries, exc)
    state = states.FAILURE if not policy.ignore_result or policy.store_errors_even_if_ignored else None
    dead = (reason or f"failed: {exc!r}") if policy.acks_late and not policy.acks_on_failure_or_timeout else None
    return Settlement(ack=policy.acks_late, dead_letter=dead, state=state, follow=FOLLOW_FAILURE,
                      event="task-failed")


def _requeue(policy: Policy, deliveries: int, exc: Any) -> Settlement:
    """Back to the queue, one more delivery counted; past task_max_deliveries, a dead letter and a
    FAILURE instead (minique: Celery would requeue forever)."""
    if deliveries + 1 <= policy.max_deliveries:
        return Settlement(requeue=True)
    error = WorkerLostError(f"Task dead-lettered: too many deliveries ({deliveries + 1}, "
                            f"task_max_deliveries {policy.max_deliveries}); last: {exc!r}")
    return Settlement(ack=True, dead_letter="too many deliveries", state=states.FAILURE, result=error,
                      follow=FOLLOW_FAILURE, event="task-failed")


__all__ = ["Outcome", "Policy", "Settlement", "settle"]
