"""settle(): every outcome x acks_late x acks_on_failure_or_timeout x reject_on_worker_lost x
max deliveries, as one table checked against Celery's rules (celery/worker/request.py:
on_success, on_failure, on_timeout, on_retry, reject, acknowledge). Pure: no Redis."""
# ruff: noqa: E501  (one table row a line, with its reason beside it, reads better than wrapped rows)
import itertools

import pytest

from minique import settle as fate, states
from minique.exceptions import Reject, Retry, WorkerLostError
from minique.settle import Outcome, Policy, settle

ANY = None
# What happens to the message:
#   "-"        nothing more: it was acked before the body ran (early ack)
#   "ack"      acked after the result is stored
#   "dead"     dead-lettered with a reason (and acked)
#   "requeue"  back at the end of its queue, one delivery more counted
#   "resend"   sent again as a new message (it had been acked early)
#   "park"     sent again as it is (its ETA puts it in the delayed set), then acked
TABLE = [
    # outcome                 late  aofot rowl  message    state stored
    # --- before any body ran: the message is still held, whatever acks_late says -------------------
    (fate.UNDECODABLE,         ANY,  ANY,  ANY, "dead",    states.FAILURE),   # minique: Celery discards it with an error log
    (fate.MALFORMED,           ANY,  ANY,  ANY, "dead",    states.FAILURE),   # minique (no Celery equivalent)
    (fate.OVERSIZE,            ANY,  ANY,  ANY, "dead",    states.FAILURE),   # minique (no Celery equivalent)
    (fate.FORGED,              ANY,  ANY,  ANY, "dead",    None),             # minique: Celery's auth serializer drops it; no result from unverified data
    (fate.STALE,               ANY,  ANY,  ANY, "dead",    None),             # minique (replay protection): no result, the original's stands
    (fate.REPLAYED,            ANY,  ANY,  ANY, "dead",    None),             # minique (replay protection): no result, the original's stands
    (fate.UNKNOWN_TASK,        ANY,  ANY,  ANY, "dead",    states.FAILURE),   # minique: Celery rejects it (task_unknown) and stores nothing
    (fate.BAD_CONTENT,         ANY,  ANY,  ANY, "dead",    states.FAILURE),   # minique: Celery rejects it (ContentDisallowed)
    (fate.TOO_MANY_DELIVERIES, ANY,  ANY,  ANY, "dead",    states.FAILURE),   # minique: Celery has no delivery limit
    (fate.REVOKED,             ANY,  ANY,  ANY, "ack",     states.REVOKED),   # Celery: _announce_revoked acknowledges
    (fate.EXPIRED,             ANY,  ANY,  ANY, "ack",     states.REVOKED),
    (fate.EARLY,               ANY,  ANY,  ANY, "park",    None),             # minique: ETAs wait in the delayed set, not in the worker
    (fate.THROTTLED,           ANY,  ANY,  ANY, "park",    None),             # minique: Celery sleeps in the worker (per worker)
    (fate.CONCURRENCY,         ANY,  ANY,  ANY, "ack",     None),             # minique (parked by its acquire; no Celery equivalent)
    # --- after the body ran (pool process) -----------------------------------------------------------
    (fate.SUCCESS,             False, ANY, ANY, "-",       states.SUCCESS),
    (fate.SUCCESS,             True,  ANY, ANY, "ack",     states.SUCCESS),
    (fate.RETRY,               False, ANY, ANY, "-",       states.RETRY),
    (fate.RETRY,               True,  ANY, ANY, "ack",     states.RETRY),     # Celery: on_retry acknowledges
    (fate.REPLACE,             False, ANY, ANY, "-",       None),
    (fate.REPLACE,             True,  ANY, ANY, "ack",     None),
    (fate.IGNORE,              False, ANY, ANY, "-",       None),
    (fate.IGNORE,              True,  ANY, ANY, "ack",     None),             # Celery: Ignore acknowledges
    (fate.FAILURE,             False, ANY, ANY, "-",       states.FAILURE),
    (fate.FAILURE,             True,  True, ANY, "ack",    states.FAILURE),
    (fate.FAILURE,             True,  False, ANY, "dead",  states.FAILURE),   # Celery: reject(requeue=False): the DLX on RabbitMQ
    (fate.BAD_ARGUMENTS,       False, ANY, ANY, "-",       states.FAILURE),   # (a TypeError in Celery: the same rules)
    (fate.BAD_ARGUMENTS,       True,  True, ANY, "ack",    states.FAILURE),
    (fate.BAD_ARGUMENTS,       True,  False, ANY, "dead",  states.FAILURE),
    (fate.INTERNAL,            ANY,  ANY,  ANY, "dead",    states.FAILURE),   # minique: its own failure never loses the message
    # --- decided by the parent, the process being gone -----------------------------------------------
    (fate.WORKER_LOST,         False, ANY, ANY, "-",       states.FAILURE),
    (fate.WORKER_LOST,         True,  ANY, True, "requeue", None),            # Celery: reject_on_worker_lost requeues
    (fate.WORKER_LOST,         True,  True, False, "ack",  states.FAILURE),
    (fate.WORKER_LOST,         True,  False, False, "dead", states.FAILURE),  # Celery: reject(requeue=False)
    (fate.TIME_LIMIT,          False, ANY, ANY, "-",       states.FAILURE),
    (fate.TIME_LIMIT,          True,  True, ANY, "ack",    states.FAILURE),
    (fate.TIME_LIMIT,          True,  False, ANY, "requeue", None),           # Celery: on_timeout reject(requeue=True); minique stores no FAILURE for a task that runs again
    (fate.TERMINATED,          False, ANY, ANY, "-",       states.REVOKED),
    (fate.TERMINATED,          True,  ANY, ANY, "ack",     states.REVOKED),   # Celery: terminated: announced revoked, acknowledged
    (fate.SHUTDOWN,            False, ANY, ANY, "-",       states.FAILURE),   # minique: WorkerLostError, as a lost process
    (fate.SHUTDOWN,            True,  ANY, ANY, "requeue", None),             # Celery leaves it unacked: redelivered
]
REJECT_ROWS = [
    # Reject(requeue=...)      late   message    state
    (False,                    False, "dead",    states.REJECTED),  # minique stores REJECTED (Celery >= 5.5: FAILURE)
    (False,                    True,  "dead",    states.REJECTED),  # Celery: reject(requeue=False)
    (True,                     False, "resend",  None),             # acked early: only a new copy can go back
    (True,                     True,  "requeue", None),             # Celery: reject(requeue=True)
]
FOLLOWS = {fate.SUCCESS: fate.FOLLOW_SUCCESS, fate.REPLACE: fate.FOLLOW_REPLACE, fate.FAILURE: fate.FOLLOW_FAILURE,
           fate.BAD_ARGUMENTS: fate.FOLLOW_FAILURE, fate.WORKER_LOST: fate.FOLLOW_FAILURE,
           fate.TIME_LIMIT: fate.FOLLOW_FAILURE, fate.SHUTDOWN: fate.FOLLOW_FAILURE,
           fate.TERMINATED: fate.FOLLOW_FAILURE, fate.REVOKED: fate.FOLLOW_FAILURE, fate.EXPIRED: fate.FOLLOW_FAILURE}
ALL_OUTCOMES = sorted(fate.PRE_RUN | {fate.SUCCESS, fate.FAILURE, fate.BAD_ARGUMENTS, fate.RETRY, fate.REPLACE,
                                      fate.REJECT, fate.IGNORE, fate.INTERNAL, fate.WORKER_LOST, fate.TIME_LIMIT,
                                      fate.TERMINATED, fate.SHUTDOWN})
FLAGS = list(itertools.product([False, True], repeat=3))  # acks_late, acks_on_failure_or_timeout, reject_on_worker_lost


def what(s):
    """The table's word for what a Settlement does with the message."""
    if s.dead_letter is not None:
        assert s.ack and not s.requeue and not s.resend
        return "dead"
    assert sum([s.requeue, s.resend, s.park]) <= 1 and not (s.requeue and s.ack)
    if s.requeue:
        return "requeue"
    if s.resend:
        return "resend"
    if s.park:
        assert s.ack
        return "park"
    return "ack" if s.ack else "-"


def value_of(kind):
    return {fate.RETRY: Retry(exc=KeyError("k"), when=5.0), fate.REJECT: Reject("no")}.get(kind, ValueError("boom"))


def row_for(kind, late, aofot, rowl):
    found = [row for row in TABLE if row[0] == kind and all(want is ANY or want == got for want, got
                                                               in zip(row[1:4], (late, aofot, rowl)))]
    assert len(found) == 1, f"the table must hold exactly one row for {kind} {late} {aofot} {rowl}: {found}"
    return found[0]


@pytest.mark.parametrize("kind", [k for k in ALL_OUTCOMES if k != fate.REJECT])
@pytest.mark.parametrize("late,aofot,rowl", FLAGS)
def test_every_outcome_under_every_policy(kind, late, aofot, rowl):
    *_, message, state = row_for(kind, late, aofot, rowl)
    policy = Policy(acks_late=late, acks_on_failure_or_timeout=aofot, reject_on_worker_lost=rowl, max_deliveries=3)
    s = settle(Outcome(kind, value_of(kind), "why"), policy, deliveries=0)
    assert (what(s), s.state) == (message, state)
    if s.requeue or kind in (fate.FORGED, fate.STALE, fate.REPLAYED, fate.INTERNAL, fate.EARLY, fate.THROTTLED,
                             fate.CONCURRENCY, fate.IGNORE, fate.RETRY):
        assert s.follow is None  # it runs again, or must not (or need not) tell anything downstream
    elif kind == fate.SUCCESS or kind == fate.REPLACE:
        assert s.follow == FOLLOWS[kind]
    else:  # what waits on a task that will not run to success fails too
        assert s.follow == fate.FOLLOW_FAILURE
    assert s.retry == (kind == fate.RETRY)


@pytest.mark.parametrize("requeue,late,message,state", REJECT_ROWS)
@pytest.mark.parametrize("aofot,rowl", list(itertools.product([False, True], repeat=2)))
def test_reject(requeue, late, message, state, aofot, rowl):
    policy = Policy(acks_late=late, acks_on_failure_or_timeout=aofot, reject_on_worker_lost=rowl)
    s = settle(Outcome(fate.REJECT, Reject("no", requeue=requeue)), policy)
    assert (what(s), s.state) == (message, state)
    if not requeue:
        assert s.dead_letter == "rejected by the task: no" and s.follow == fate.FOLLOW_FAILURE


@pytest.mark.parametrize("kind,late,aofot,rowl", [
    (row[0], late, aofot, rowl) for row in TABLE if row[4] == "requeue"
    for late, aofot, rowl in FLAGS if row_for(row[0], late, aofot, rowl) is row] + [
    (fate.REJECT, True, aofot, rowl) for aofot, rowl in itertools.product([False, True], repeat=2)])
def test_a_requeue_past_max_deliveries_is_a_dead_letter_with_a_failure(kind, late, aofot, rowl):
    policy = Policy(acks_late=late, acks_on_failure_or_timeout=aofot, reject_on_worker_lost=rowl, max_deliveries=3)
    value = Reject("no", requeue=True) if kind == fate.REJECT else WorkerLostError("gone")
    assert what(settle(Outcome(kind, value), policy, deliveries=2)) == "requeue"   # the 3rd redelivery is allowed
    s = settle(Outcome(kind, value), policy, deliveries=3)
    assert (what(s), s.state, s.dead_letter) == ("dead", states.FAILURE, "too many deliveries")
    assert isinstance(s.result, WorkerLostError) and "too many deliveries" in str(s.result)
    assert s.follow == fate.FOLLOW_FAILURE  # nothing waits forever on a task that will not run again


def test_every_outcome_is_in_the_table():
    assert {row[0] for row in TABLE} | {fate.REJECT} == set(ALL_OUTCOMES)


@pytest.mark.parametrize("late", [False, True])
def test_ignore_result_stores_no_success_and_failures_only_when_asked(late):
    quiet = Policy(acks_late=late, ignore_result=True)
    assert settle(Outcome(fate.SUCCESS, 1), quiet).state is None
    assert settle(Outcome(fate.RETRY, Retry(when=1.0)), quiet).state is None
    assert settle(Outcome(fate.FAILURE, ValueError()), quiet).state is None
    assert settle(Outcome(fate.FAILURE, ValueError()), quiet._replace(store_errors_even_if_ignored=True)).state == \
        states.FAILURE
    # what must never stay PENDING is recorded even so: a dead letter, a revoke
    assert settle(Outcome(fate.UNKNOWN_TASK, KeyError()), quiet).state == states.FAILURE
    assert settle(Outcome(fate.REVOKED), quiet).state == states.REVOKED


def test_what_is_stored():
    retry_cause = KeyError("k")
    assert settle(Outcome(fate.RETRY, Retry(exc=retry_cause)), Policy()).result is retry_cause
    assert settle(Outcome(fate.RETRY, Retry()), Policy()).result is None  # (the Retry itself is stored)
    assert settle(Outcome(fate.FAILURE, ValueError()), Policy()).result is None  # (the exception itself)
    revoked = settle(Outcome(fate.REVOKED), Policy())
    assert str(revoked.result) == "revoked"
    assert settle(Outcome(fate.UNDECODABLE, None, "not msgpack"), Policy()).dead_letter == "not msgpack"
    failed = settle(Outcome(fate.FAILURE, ValueError("x")), Policy(acks_late=True, acks_on_failure_or_timeout=False))
    assert failed.dead_letter == "failed: ValueError('x')"


def test_unknown_outcome_is_an_error():
    with pytest.raises(ValueError):
        settle(Outcome("nonsense"), Policy())
