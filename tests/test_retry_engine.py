"""The retry and back-off engine (minique/retry.py): pure decisions, no Redis, no processes.

Also the two places that ask it: Task.retry() (inside a request context) and the worker's
autoretry_for path, checked through their pure inputs and outputs.
"""
import random
from datetime import datetime, timezone

import pytest

from minique import Minique, context, retry as engine
from minique.exceptions import MaxRetriesExceededError, Retry
from minique.retry import RetryPolicy, backoff, can_retry, countdown_for, retry_at

# --- backoff ---------------------------------------------------------------------------------------

def test_backoff_without_jitter_doubles_from_the_base():
    assert [backoff(n, 1.0, jitter=False) for n in range(6)] == [1, 2, 4, 8, 16, 32]
    assert [backoff(n, 0.25, jitter=False) for n in range(3)] == [0.25, 0.5, 1.0]


def test_backoff_is_capped_by_the_maximum():
    assert backoff(10, 1.0, maximum=600, jitter=False) == 600
    assert backoff(3, 1.0, maximum=5, jitter=False) == 5
    assert backoff(0, 10.0, maximum=5, jitter=False) == 5


def test_backoff_survives_huge_retry_counts():
    """retry forever (max_retries=None) with a back-off: 2**1100 does not fit a float, the cap still applies."""
    assert backoff(1100, 1.0, maximum=600, jitter=False) == 600
    assert 0 <= backoff(5000, 1.0, maximum=600, jitter=True, rng=random.Random(1)) <= 600


def test_full_jitter_stays_between_zero_and_the_capped_delay_and_spreads():
    rng = random.Random(42)
    values = [backoff(4, 1.0, maximum=600, jitter=True, rng=rng) for _ in range(2000)]
    assert all(0 <= v <= 16 for v in values)
    assert min(values) < 1.0 and max(values) > 15.0        # full jitter uses the whole range
    assert 6.5 < sum(values) / len(values) < 9.5             # uniform on [0, 16]: mean 8
    capped = [backoff(30, 1.0, maximum=10, jitter=True, rng=rng) for _ in range(500)]
    assert all(0 <= v <= 10 for v in capped)


def test_jitter_is_reproducible_with_a_seeded_rng():
    a = [backoff(3, 2.0, rng=random.Random(7)) for _ in range(3)]
    b = [backoff(3, 2.0, rng=random.Random(7)) for _ in range(3)]
    assert a == b


# --- countdown_for / retry_at ------------------------------------------------------------------------

def test_explicit_countdown_wins_over_backoff_and_default():
    policy = RetryPolicy(retry_backoff=True, retry_jitter=False)
    assert countdown_for(policy, 5, countdown=3) == 3.0
    assert countdown_for(RetryPolicy(), 0, countdown=0) == 0.0
    assert countdown_for(RetryPolicy(), 0, countdown=-4) == 0.0   # never in the past


def test_default_retry_delay_when_no_backoff():
    assert countdown_for(RetryPolicy(), 0) == engine.DEFAULT_RETRY_DELAY == 180.0
    assert countdown_for(RetryPolicy(default_retry_delay=7), 3) == 7.0


def test_retry_backoff_true_means_base_one_and_a_number_is_the_base():
    assert [countdown_for(RetryPolicy(retry_backoff=True, retry_jitter=False), n) for n in range(4)] == [1, 2, 4, 8]
    assert [countdown_for(RetryPolicy(retry_backoff=3, retry_jitter=False), n) for n in range(3)] == [3, 6, 12]
    policy = RetryPolicy(retry_backoff=True, retry_jitter=False)
    assert countdown_for(policy, 20) == engine.DEFAULT_BACKOFF_MAX == 600.0
    assert countdown_for(RetryPolicy(retry_backoff=True, retry_backoff_max=30, retry_jitter=False), 20) == 30


def test_backoff_with_jitter_by_default():
    policy = RetryPolicy(retry_backoff=True)           # retry_jitter defaults to True, as in Celery
    rng = random.Random(3)
    values = {countdown_for(policy, 6, rng=rng) for _ in range(50)}
    assert len(values) > 40 and all(0 <= v <= 64 for v in values)


def test_retry_at_eta_wins_then_now_plus_countdown():
    policy = RetryPolicy(retry_backoff=2, retry_jitter=False)
    assert retry_at(1000.0, policy, 0, countdown=5, eta=2000.0) == 2000.0
    assert retry_at(1000.0, policy, 0, countdown=5) == 1005.0
    assert retry_at(1000.0, policy, 2) == 1008.0
    assert retry_at(1000.0, RetryPolicy(), 0) == 1180.0


# --- can_retry -----------------------------------------------------------------------------------

def test_max_retries_default_three():
    policy = RetryPolicy()
    assert policy.max_retries == engine.DEFAULT_MAX_RETRIES == 3
    assert [can_retry(policy, n) for n in range(5)] == [True, True, True, False, False]


def test_max_retries_none_retries_forever():
    assert all(can_retry(RetryPolicy(max_retries=None), n) for n in (0, 10, 10_000))


def test_max_retries_zero_never_retries():
    assert not can_retry(RetryPolicy(max_retries=0), 0)


def test_override_replaces_the_policy_limit_even_with_none():
    policy = RetryPolicy(max_retries=1)
    assert can_retry(policy, 3, max_retries=5, override=True)
    assert not can_retry(policy, 5, max_retries=5, override=True)
    assert can_retry(policy, 50, max_retries=None, override=True)      # explicit None: forever
    assert not can_retry(policy, 3, max_retries=5, override=False)     # not an override: the policy's 1


# --- Task.retry(): what a task raises --------------------------------------------------------------

@pytest.fixture
def app():
    return Minique("retry-unit", broker="redis://127.0.0.1:1/0")


def _run_as_worker(task, retries=0, *args):
    """Call task.retry() as the worker would run the task: inside a request with `retries`."""
    context.push(context.Request(id="tid", task=task.name, args=args, kwargs={}, retries=retries,
                                 root_id="root", parent_id="parent"))
    try:
        return task(*args)
    finally:
        context.pop()


def test_task_retry_raises_retry_with_countdown_eta_and_defaults(app):
    @app.task(bind=True, default_retry_delay=30)
    def t(self, how):
        if how == "countdown":
            raise self.retry(countdown=5)
        if how == "eta":
            raise self.retry(eta=datetime(2030, 1, 1, tzinfo=timezone.utc))
        raise self.retry()

    import time
    before = time.time()
    with pytest.raises(Retry) as info:
        _run_as_worker(t, 0, "countdown")
    assert before + 5 <= info.value.when <= time.time() + 5
    with pytest.raises(Retry) as info:
        _run_as_worker(t, 0, "eta")
    assert info.value.when == datetime(2030, 1, 1, tzinfo=timezone.utc).timestamp()
    with pytest.raises(Retry) as info:
        _run_as_worker(t, 0, "default")
    assert before + 30 <= info.value.when <= time.time() + 30


def test_task_retry_uses_backoff_when_the_task_has_one(app):
    @app.task(bind=True, retry_backoff=2, retry_jitter=False, max_retries=10)
    def t(self):
        raise self.retry()

    import time
    for retries, expected in ((0, 2), (1, 4), (3, 16)):
        with pytest.raises(Retry) as info:
            _run_as_worker(t, retries)
        assert abs(info.value.when - (time.time() + expected)) < 1.0


def test_past_max_retries_the_original_exception_is_raised(app):
    @app.task(bind=True, max_retries=2)
    def t(self):
        raise self.retry(exc=KeyError("original"), countdown=0)

    with pytest.raises(Retry):
        _run_as_worker(t, 1)
    with pytest.raises(KeyError, match="original"):
        _run_as_worker(t, 2)


def test_past_max_retries_without_exception_is_max_retries_exceeded(app):
    @app.task(bind=True, max_retries=1)
    def t(self):
        raise self.retry(countdown=0)

    with pytest.raises(Retry):
        _run_as_worker(t, 0)
    with pytest.raises(MaxRetriesExceededError):
        _run_as_worker(t, 1)


def test_retry_max_retries_argument_overrides_the_task_option(app):
    @app.task(bind=True, max_retries=1)
    def t(self, limit):
        raise self.retry(countdown=0, max_retries=limit)

    context.push(context.Request(id="x", task=t.name, retries=4))
    try:
        with pytest.raises(Retry):
            t(5)
        with pytest.raises(MaxRetriesExceededError):
            t(4)
    finally:
        context.pop()


def test_retry_called_directly_reraises_the_exception(app):
    @app.task(bind=True)
    def t(self):
        raise self.retry(exc=ValueError("direct"))

    with pytest.raises(ValueError, match="direct"):
        t()


def test_retry_carries_new_args_and_kwargs(app):
    @app.task(bind=True)
    def t(self):
        raise self.retry(args=(1, 2), kwargs={"k": 3}, countdown=0)

    with pytest.raises(Retry) as info:
        _run_as_worker(t)
    assert info.value.args_override == (1, 2) and info.value.kwargs_override == {"k": 3}


def test_task_policy_reflects_options(app):
    @app.task(max_retries=None, retry_backoff=True, retry_backoff_max=50, retry_jitter=False, default_retry_delay=9)
    def t():
        pass

    assert t.policy == RetryPolicy(max_retries=None, default_retry_delay=9, retry_backoff=True,
                                   retry_backoff_max=50, retry_jitter=False)


# --- the worker's retried message ------------------------------------------------------------------

def test_retry_message_keeps_id_root_parent_and_counts(app):
    """The retry of a message is the same message with retries+1 and the ETA; nothing else changes."""
    from minique.retry import next_message

    @app.task
    def t(x):
        return x

    msg = app.build_message(t.name, (1,), None, {"root_id": "R", "parent_id": "P", "expires": 60})
    new = next_message(msg, 1234.5)
    assert (new.id, new.root_id, new.parent_id, new.retries, new.eta) == (msg.id, "R", "P", 1, 1234.5)
    assert new.body == msg.body and new.expires == msg.expires and new.task == msg.task
    again = next_message(new, None, kwargs={"y": 2}, accept=app.accept)
    assert again.retries == 2 and again.eta is None and again.args_kwargs(app.accept) == ([1], {"y": 2})


def test_autoretry_respects_retry_kwargs_max_retries(app):
    from minique.retry import autoretry_at

    @app.task(autoretry_for=(KeyError,), retry_kwargs={"max_retries": 5, "countdown": 7})
    def t():
        pass

    assert autoretry_at(100.0, t.policy, 4, KeyError("x"), t.autoretry_for, t.retry_kwargs) == 107.0
    assert autoretry_at(100.0, t.policy, 5, KeyError("x"), t.autoretry_for, t.retry_kwargs) is None
    assert autoretry_at(100.0, t.policy, 0, ValueError("x"), t.autoretry_for, t.retry_kwargs) is None
