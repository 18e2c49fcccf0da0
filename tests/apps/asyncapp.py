"""async def tasks for tests/test_async_tasks.py (settings: MINIQUE_BROKER_URL, TESTAPP_SETTINGS)."""
import asyncio
import json
import os

from bookkeeping import store_for

from minique import Minique

app = Minique("asyncapp", include=["asyncapp"])
app.conf.update(json.loads(os.environ.get("TESTAPP_SETTINGS") or "{}"))


# (redis-py's default read timeout is shorter than the gates' BLPOP waits)
store = store_for(app, socket_timeout=30)


@app.task
async def double(x):
    await asyncio.sleep(0.01)
    return 2 * x


@app.task(bind=True)
async def whoami(self):
    await asyncio.sleep(0)
    return [self.request.id, os.getpid(), id(asyncio.get_running_loop())]


@app.task(autoretry_for=(KeyError,), max_retries=2, default_retry_delay=0.05)
async def flaky(key):
    if store().incr(key) < 3:
        raise KeyError(key)
    return "third time"


@app.task(soft_time_limit=0.3)
async def slow(key):
    try:
        await asyncio.sleep(10)
    finally:  # cancelled at its await point: it may clean up
        store().rpush(key, "cleaned up")
