"""Task states, as data: names, which are final, and their precedence (Celery's)."""
from __future__ import annotations

PENDING = "PENDING"      # unknown to the result store: waiting, or never sent
RECEIVED = "RECEIVED"    # a worker holds the message
STARTED = "STARTED"      # running (stored only with task_track_started)
RETRY = "RETRY"          # failed, and sent again for later
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"      # revoked or expired; never ran to the end
REJECTED = "REJECTED"    # refused by the task (Reject); its message went to the dead letters
IGNORED = "IGNORED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED, REJECTED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED, REJECTED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED, REJECTED})

ALL_STATES = (PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED, REJECTED, IGNORED)

# Lower index = later in a task's life; used to compare states as Celery's precedence() does. A custom
# state (update_state(state="PROGRESS")) sorts with None: after every unready built-in state, before
# the final ones. (Celery ranks REVOKED and REJECTED below custom states; here they are final, ready
# states, so they rank with SUCCESS and FAILURE.)
PRECEDENCE = [SUCCESS, FAILURE, REVOKED, REJECTED, None, STARTED, RECEIVED, RETRY, PENDING]


def precedence(state: str) -> int:
    """Position of `state` in PRECEDENCE (unknown states sort with None)."""
    try:
        return PRECEDENCE.index(state)
    except ValueError:
        return PRECEDENCE.index(None)


class state(str):
    """A state name compared by precedence (Celery's `states.state`): `state("PROGRESS") > state(STARTED)`
    and `state("PROGRESS") < state(SUCCESS)`."""

    def __gt__(self, other: str) -> bool:
        return precedence(self) < precedence(other)

    def __ge__(self, other: str) -> bool:
        return precedence(self) <= precedence(other)

    def __lt__(self, other: str) -> bool:
        return precedence(self) > precedence(other)

    def __le__(self, other: str) -> bool:
        return precedence(self) >= precedence(other)
