"""Replay protection for messages (pure, no I/O): `security_message_max_age`, off by default.

A signed message proves who sent it, not when, nor how often: anyone who can write to the queues
could send a copy of one they saw, as often as they like. With `security_message_max_age` set
(seconds), a worker runs a message only

1. while it is fresh: no older than the window, counted from its send time (`sent_at`, inside
   the signature) or from its ETA when it has one; an older one is dead-lettered as *stale*;
2. once per delivery: before the body runs, the worker takes a mark for (task id, retries,
   delivery count) with SET NX, which lives until the message is stale on every worker (the
   rest of the window plus CLOCK_SKEW); a message whose mark is taken is dead-lettered as
   *replayed*, with the worker that holds the mark.

What runs again as it should: a retry (retries + 1, signed anew by the worker), a message
redelivered after a lost process or a dead worker, or requeued (the broker counts one more
delivery), a message put back before it started (no mark taken yet), Reject(requeue=True) with
early ack (its mark is given back with the resend). What does not: a copy of a message that
started, sent by anyone within the window (also `dlq replay` of a message that started); a
redelivery later than the window (stale). The worker's side is in worker/execute.py; the rules
and their limits are in docs/security.md.
"""
from __future__ import annotations

import math
from typing import Any, Optional

from .exceptions import ConfigurationError
from .message import Message

CLOCK_SKEW = 30.0  # seconds a mark outlives its message's freshness: workers' clocks may differ this much


def max_age_of(value: Any) -> Optional[float]:
    """`security_message_max_age` as seconds, or None (off); ConfigurationError when it is not a
    positive number."""
    if value is None or value is False or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ConfigurationError(f"security_message_max_age must be a positive number of seconds (None: no replay "
                                 f"protection), not {value!r}")
    return float(value)


def fresh_from(msg: Message) -> float:
    """When the message's window starts (epoch seconds): its ETA, if later than its send time."""
    eta = msg.eta
    return eta if eta is not None and eta > msg.sent_at else msg.sent_at


def staleness(msg: Message, now: float, max_age: float) -> Optional[str]:
    """Why the message is stale (the dead-letter reason), or None while it is fresh."""
    if not msg.sent_at:
        return "stale message: it carries no send time (security_message_max_age is set)"
    age = now - fresh_from(msg)
    if age <= max_age:
        return None
    since = "due" if fresh_from(msg) != msg.sent_at else "sent"
    return f"stale message: {since} {age:.0f}s ago, over security_message_max_age ({max_age:g}s)"


def mark_ttl_ms(msg: Message, now: float, max_age: float) -> int:
    """How long a once-only mark must live (ms): until the message is stale on every worker."""
    return max(1000, math.ceil((fresh_from(msg) + max_age + CLOCK_SKEW - now) * 1000))


def replayed_reason(msg: Message, deliveries: int, holder: Any) -> str:
    """The dead-letter reason of a delivery whose once-only mark another delivery holds."""
    who = holder.decode(errors="replace") if isinstance(holder, bytes) else str(holder)
    return (f"replayed message: task {msg.id} (retries {msg.retries}, delivery {deliveries}) already started "
            f"within security_message_max_age (mark held by {who[:200]})")
