"""The taskiq agent: `benchmarks/.taskiq-venv/bin/python -m benchmarks.agent_taskiq` (see agent.py).

Runs only inside the taskiq virtualenv; never imports minique. Measures the asyncio-io figure only.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any, List

from . import agent

CHUNK = 200   # kiq() calls in flight at once


class TaskiqDriver(agent.Driver):
    name = "taskiq"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        from .apps import taskiq_io
        self.app = taskiq_io
        self.loop = asyncio.new_event_loop()   # one loop for the agent's life (the broker's pools live on it)

    def version(self) -> str:
        from importlib.metadata import version
        return f"{version('taskiq')} (taskiq-redis {version('taskiq-redis')}, redis-py {version('redis')})"

    def io_worker_argv(self, concurrency: int, name: str) -> List[str]:
        return [sys.executable, "-m", "taskiq", "worker", "benchmarks.apps.taskiq_io:broker", "--workers", "1",
                "--max-async-tasks", str(concurrency), "--log-level", "WARNING"]

    def io_send(self, n: int) -> List[Any]:
        broker, sleeper = self.app.broker, self.app.sleeper

        async def send() -> List[Any]:
            # startup declares the stream's consumer group (FLUSHALL removed it) before anything is sent:
            # a group made later, by the worker, would start after these messages
            await broker.startup()
            tasks: List[Any] = []
            for first in range(0, n, CHUNK):
                tasks.extend(await asyncio.gather(*(sleeper.kiq(i) for i in range(first, min(n, first + CHUNK)))))
            return tasks
        return self.loop.run_until_complete(send())

    def io_result_keys(self, handles: List[Any]) -> List[bytes]:
        return [task.task_id.encode() for task in handles]   # RedisAsyncResultBackend: the task id, no prefix

    def io_starts(self, handles: List[Any], timeout: float) -> List[float]:
        async def results() -> List[Any]:
            out: List[Any] = []
            for first in range(0, len(handles), CHUNK):
                got = await asyncio.gather(*(task.wait_result(timeout=timeout)
                                             for task in handles[first:first + CHUNK]))
                for res in got:
                    if res.is_err:
                        raise RuntimeError(f"taskiq task failed: {res.error!r}")
                    out.append(res.return_value)
            await self.app.broker.shutdown()
            return out
        return self.loop.run_until_complete(results())


if __name__ == "__main__":
    agent.serve(TaskiqDriver)
