"""`DjangoTask` (Celery 5.4's `celery.contrib.django.task.DjangoTask`): send a task once the database
transaction commits. It is the default task class of an app created when Django is configured."""
from __future__ import annotations

import functools
from typing import Any

from ...task import Task


class DjangoTask(Task[Any, Any]):
    """A task with `delay_on_commit` and `apply_async_on_commit`."""

    def delay_on_commit(self, *args: Any, **kwargs: Any) -> None:
        """`delay(*args, **kwargs)` when the current transaction commits (now if none is open); never
        on a rollback. Returns None: the task id does not exist before the commit."""
        from django.db import transaction
        transaction.on_commit(functools.partial(self.delay, *args, **kwargs))

    def apply_async_on_commit(self, *args: Any, **kwargs: Any) -> None:
        """`apply_async(*args, **kwargs)` when the current transaction commits (as delay_on_commit)."""
        from django.db import transaction
        transaction.on_commit(functools.partial(self.apply_async, *args, **kwargs))
