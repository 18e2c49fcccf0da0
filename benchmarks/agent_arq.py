"""The arq agent: `benchmarks/.arq-venv/bin/python -m benchmarks.agent_arq` (see agent.py).

Runs only inside the arq virtualenv; never imports minique. Measures the asyncio-io figure only.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any, List

from . import agent

CHUNK = 200   # enqueue_job calls in flight at once (each is its own WATCH/MULTI transaction)


class ArqDriver(agent.Driver):
    name = "arq"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        import arq
        from arq.connections import RedisSettings
        self.arq = arq
        self.settings = RedisSettings.from_dsn(self.redis_url)
        self.loop = asyncio.new_event_loop()   # one loop for the agent's life (its pool lives on it)
        self.pool = self.loop.run_until_complete(arq.create_pool(self.settings))

    def version(self) -> str:
        import redis
        return f"{self.arq.VERSION} (redis-py {redis.__version__})"

    def io_worker_argv(self, concurrency: int, name: str) -> List[str]:
        # max_jobs is the app's (BENCH_IO_CONCURRENCY); the log dict keeps arq at WARNING
        return [sys.executable, "-m", "arq", "benchmarks.apps.arq_io.WorkerSettings",
                "--custom-log-dict", "benchmarks.apps.arq_io.LOGGING"]

    def io_send(self, n: int) -> List[Any]:
        async def send() -> List[Any]:
            jobs: List[Any] = []
            for first in range(0, n, CHUNK):
                jobs.extend(await asyncio.gather(*(self.pool.enqueue_job("sleeper", i)
                                                   for i in range(first, min(n, first + CHUNK)))))
            return jobs
        return self.loop.run_until_complete(send())

    def io_result_keys(self, handles: List[Any]) -> List[bytes]:
        from arq.constants import result_key_prefix
        return [(result_key_prefix + job.job_id).encode() for job in handles]

    def io_starts(self, handles: List[Any], timeout: float) -> List[float]:
        async def results() -> List[Any]:
            out: List[Any] = []
            for first in range(0, len(handles), CHUNK):
                out.extend(await asyncio.gather(*(job.result(timeout=timeout)
                                                  for job in handles[first:first + CHUNK])))
            return out
        return self.loop.run_until_complete(results())


if __name__ == "__main__":
    agent.serve(ArqDriver)
