"""The Celery agent: `benchmarks/.celery-venv/bin/python -m benchmarks.agent_celery` (see agent.py).

Runs only inside the Celery virtualenv; never imports minique.
"""
from __future__ import annotations

import sys
from typing import Any, List

from . import agent


class CeleryDriver(agent.Driver):
    name = "celery"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        import celery

        from .apps import celery_bench
        self.c = celery_bench
        self.celery = celery

    def version(self) -> str:
        import kombu
        return f"{self.celery.__version__} (kombu {kombu.__version__})"

    def worker_argv(self, concurrency: int, name: str, flags: List[str]) -> List[str]:
        # gossip and mingle only slow the start (they talk to other workers); neither is on the task path
        return [sys.executable, "-m", "celery", "-A", "benchmarks.apps.celery_bench", "worker", "-P", "prefork",
                "-c", str(concurrency), "-l", "warning", "-n", name, "--without-gossip", "--without-mingle", *flags]

    def send_one(self, i: int) -> Any:
        return self.c.add.delay(i, i)

    def send_bulk(self, n: int) -> Any:
        add = self.c.add
        return self.celery.group(add.s(i, i) for i in range(n)).apply_async()

    send_group = send_bulk

    def preload(self, task: str, n: int) -> None:
        task = getattr(self.c, task)
        left = n
        while left > 0:
            k = min(left, 5000)
            self.celery.group(task.s() for _ in range(k)).apply_async()
            left -= k

    def call_add(self, timeout: float) -> Any:
        return self.c.add.delay(1, 2).get(timeout=timeout)

    def run_chord(self, n: int, timeout: float) -> Any:
        noop, collect = self.c.noop, self.c.collect
        res = self.celery.chord([noop.s() for _ in range(n)])(collect.s())
        return res.get(timeout=timeout)


if __name__ == "__main__":
    agent.serve(CeleryDriver)
