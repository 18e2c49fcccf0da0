"""The retry and back-off engine: pure decisions about when a task runs again.

Celery's rules, with one addition: a task with `retry_backoff` set also backs off
when it calls `self.retry()` without a countdown (Celery would wait
`default_retry_delay`, 180 s, which surprises users who set a back-off).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

from . import serializers
from .message import Message

DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_DELAY = 180.0
DEFAULT_BACKOFF_MAX = 600.0


@dataclass(frozen=True)
class RetryPolicy:
    """A task's retry options (Celery's names)."""

    max_retries: Optional[int] = DEFAULT_MAX_RETRIES   # None: retry forever
    default_retry_delay: float = DEFAULT_RETRY_DELAY
    retry_backoff: Union[bool, float] = False           # True means a base of 1 s
    retry_backoff_max: float = DEFAULT_BACKOFF_MAX
    retry_jitter: bool = True


def backoff(retries: int, base: float, maximum: float = DEFAULT_BACKOFF_MAX, jitter: bool = True,
            rng: Optional[random.Random] = None) -> float:
    """Exponential back-off: min(maximum, base * 2**retries), with full jitter when asked."""
    try:
        delay: float = min(maximum, base * (2 ** retries))
    except OverflowError:  # retrying forever: 2**retries outgrew a float long after the cap applied
        delay = maximum
    if jitter:
        delay = rng.uniform(0, delay) if rng is not None else random.uniform(0, delay)
    return max(0.0, delay)


def countdown_for(policy: RetryPolicy, retries: int, countdown: Optional[float] = None,
                  rng: Optional[random.Random] = None) -> float:
    """Seconds to wait before retry number `retries + 1`.

    An explicit countdown wins; then the back-off, if the task has one; then default_retry_delay.
    """
    if countdown is not None:
        return max(0.0, float(countdown))
    if policy.retry_backoff:
        base = 1.0 if policy.retry_backoff is True else float(policy.retry_backoff)
        return backoff(retries, base, policy.retry_backoff_max, policy.retry_jitter, rng)
    return float(policy.default_retry_delay)


def can_retry(policy: RetryPolicy, retries: int, max_retries: Optional[int] = None,
              override: bool = False) -> bool:
    """True while another retry is allowed (`retries` = retries already made)."""
    limit = max_retries if override else policy.max_retries
    return limit is None or retries < limit


def retry_at(now: float, policy: RetryPolicy, retries: int, countdown: Optional[float] = None,
             eta: Optional[float] = None, rng: Optional[random.Random] = None) -> float:
    """Epoch time at which the retry becomes due."""
    if eta is not None:
        return float(eta)
    return now + countdown_for(policy, retries, countdown, rng)


def autoretry_at(now: float, policy: RetryPolicy, retries: int, exc: BaseException,
                 autoretry_for: Tuple[type, ...], retry_kwargs: Optional[Dict[str, Any]]) -> Optional[float]:
    """When a task that raised `exc` runs again under `autoretry_for` (None: it does not retry).

    `retry_kwargs` are Celery's: its `max_retries` overrides the task's, its `countdown` the back-off."""
    if not autoretry_for or not isinstance(exc, autoretry_for):
        return None
    rk = retry_kwargs or {}
    if not can_retry(policy, retries, rk.get("max_retries"), override="max_retries" in rk):
        return None
    return retry_at(now, policy, retries, rk.get("countdown"))


def next_message(msg: Message, when: Optional[float], args: Optional[Any] = None,
                 kwargs: Optional[Dict[str, Any]] = None, accept: Any = None) -> Message:
    """The message of retry number `msg.retries + 1`: same id, root, parent and options, due at
    `when`; new arguments where `self.retry(args=..., kwargs=...)` gave them. Unsigned: the caller
    signs it again when a security key is set."""
    changes: Dict[str, Any] = {"retries": msg.retries + 1, "eta": when, "signature": None}
    if args is not None or kwargs is not None:
        old_args, old_kwargs = msg.args_kwargs(accept) if args is None or kwargs is None else ([], {})
        changes["body"] = serializers.dumps([list(args if args is not None else old_args),
                                             kwargs if kwargs is not None else old_kwargs], msg.content_type)
    return msg._replace(**changes)
