"""The I/O-bound task body shared by the asyncio-io bench apps (minique, arq, taskiq).

Standard library only, so it runs in every system's environment. The task notes when
it started (time.time(), the clock the runner reads too), sleeps without blocking
the event loop, and returns its start: the runner takes the first start of a run
from the results.
"""
from __future__ import annotations

import asyncio
import os
import time

SECONDS = float(os.environ.get("BENCH_IO_SECONDS", "1"))
CONCURRENCY = int(os.environ.get("BENCH_IO_CONCURRENCY", "10000"))
QUEUE = "io"


async def sleep_and_return_start() -> float:
    """One I/O-bound task: its start time, after an asyncio.sleep of SECONDS."""
    started = time.time()
    await asyncio.sleep(SECONDS)
    return started
