"""The minique agent: `python -m benchmarks.agent_minique` (see agent.py)."""
from __future__ import annotations

import sys
from typing import Any, List

from . import agent


class MiniqueDriver(agent.Driver):
    name = "minique"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        from minique import canvas

        from .apps import mq_bench
        self.m = mq_bench
        self.canvas = canvas

    def version(self) -> str:
        import minique
        return getattr(minique, "__version__", "?")

    def worker_argv(self, concurrency: int, name: str, flags: List[str]) -> List[str]:
        return [sys.executable, "-m", "minique.cli", "-A", "benchmarks.apps.mq_bench", "worker",
                "-c", str(concurrency), "-l", "warning", "-n", name, *flags]

    def send_one(self, i: int) -> Any:
        return self.m.add.delay(i, i)

    def send_bulk(self, n: int) -> Any:
        return self.m.add.delay_many((i, i) for i in range(n))

    def send_group(self, n: int) -> Any:
        add = self.m.add
        return self.canvas.group(add.s(i, i) for i in range(n)).apply_async()

    def send_async(self, n: int, coroutines: int, reset: Any) -> float:
        """Seconds for `coroutines` coroutines of one event loop to send n tasks with `await add.adelay()`,
        each one after the other (the loop's connections are opened and warmed first)."""
        import asyncio
        import time
        add = self.m.add

        async def sender(first: int) -> None:
            for i in range(first, n, coroutines):
                await add.adelay(i, i)

        async def main() -> float:
            await asyncio.gather(*(add.adelay(i, i) for i in range(200)))
            reset()
            t0 = time.perf_counter()
            await asyncio.gather(*(sender(k) for k in range(coroutines)))
            return time.perf_counter() - t0

        return asyncio.run(main())

    def io_worker_argv(self, concurrency: int, name: str) -> List[str]:
        from .apps.io_body import QUEUE
        return [sys.executable, "-m", "minique.cli", "-A", "benchmarks.apps.mq_io", "worker", "-P", "asyncio",
                "-c", "1", "--async-concurrency", str(concurrency), "-Q", QUEUE, "-l", "warning", "-n", name]

    def io_send(self, n: int) -> List[Any]:
        from .apps import mq_io
        return mq_io.sleeper.delay_many((i,) for i in range(n))

    io_result_command = "rpush"   # a final state is pushed onto the list get() waits on (backend.write_meta)

    def io_result_keys(self, handles: List[Any]) -> List[bytes]:
        from minique import keys
        return [keys.ready(r.id).encode() for r in handles]

    def io_starts(self, handles: List[Any], timeout: float) -> List[float]:
        return [r.get(timeout=timeout) for r in handles]

    def preload(self, task: str, n: int) -> None:
        task = getattr(self.m, task)
        left = n
        while left > 0:
            k = min(left, 10000)
            task.delay_many([()] * k)
            left -= k

    def call_add(self, timeout: float) -> Any:
        return self.m.add.delay(1, 2).get(timeout=timeout)

    def run_chord(self, n: int, timeout: float) -> Any:
        noop, collect = self.m.noop, self.m.collect
        res = self.canvas.chord([noop.s() for _ in range(n)], collect.s()).apply_async()
        return res.get(timeout=timeout)


if __name__ == "__main__":
    agent.serve(MiniqueDriver)
