"""The event loop `async def` task bodies run on in a pool process or thread (and in eager mode): one
per thread, made on first use and kept — not `asyncio.run` per task, so what a task's module sets up on
the loop (connection pools, clients) serves every task of that process."""
from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Coroutine, Optional, TypeVar

from .exceptions import SoftTimeLimitExceeded

T = TypeVar("T")
_local = threading.local()


def current_loop() -> asyncio.AbstractEventLoop:
    """This thread's loop for task bodies (a new one in a forked child: a parent's loop is not its own)."""
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed() or getattr(_local, "pid", None) != os.getpid():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        _local.loop, _local.pid = loop, os.getpid()
    return loop


def run(coro: Coroutine[Any, Any, T], soft_time_limit: Optional[float] = None) -> T:
    """Run a task body's coroutine to its end on this thread's loop. With a soft time limit, the
    coroutine is cancelled at its await point when the limit passes (it sees CancelledError, asyncio's
    way, and may clean up in `finally`), and the task ends with SoftTimeLimitExceeded."""
    loop = current_loop()
    if loop.is_running():
        coro.close()
        raise RuntimeError("an async def task was run (called eagerly) inside a running event loop: "
                           "await it (await task.run(...)) or send it (delay) instead")
    if not soft_time_limit:
        return loop.run_until_complete(coro)
    task = loop.create_task(coro)
    expired = []

    def expire() -> None:
        expired.append(True)
        task.cancel()

    timer = loop.call_later(soft_time_limit, expire)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        if expired:
            raise SoftTimeLimitExceeded(f"soft time limit ({soft_time_limit}s) exceeded") from None
        raise
    finally:
        timer.cancel()
