"""minique: a Redis-native task queue with Celery's API and semantics.

    from minique import Minique
    app = Minique("proj", broker="redis://localhost:6379/0")

    @app.task
    def add(x, y):
        return x + y

    add.delay(2, 3).get(timeout=10)   # 5, once `minique -A proj worker` runs
"""
from .app import Minique
from .canvas import Signature, chain, chord, chunks, group, signature, xmap, xstarmap
from .result import AsyncResult, GroupResult
from .schedules import crontab, schedule
from .shared import current_app, shared_task
from .task import Task

__version__ = "0.1.0"
Celery = Minique  # for a one-line migration: `from minique import Celery`

__all__ = ["Minique", "Celery", "Task", "AsyncResult", "GroupResult", "Signature", "signature", "group", "chain",
           "chord", "chunks", "xmap", "xstarmap", "crontab", "schedule", "shared_task", "current_app", "__version__"]
