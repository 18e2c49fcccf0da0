"""Tasks for tests/test_asyncio_pool.py (the asyncio pool, -P asyncio). They wait on gates in Redis through
redis.asyncio, so that waiting never blocks the process's loop: a gate is a list, opened by one push; each
task that passes pushes the token back, so one push lets every waiting task through."""
import asyncio
import json
import os
import time

import redis
import redis.asyncio

from minique import Minique, Task, signals

app = Minique("asyncpool", include=["asyncpool"])
app.conf.update(json.loads(os.environ.get("TESTAPP_SETTINGS") or "{}"))
_clients = {}


def aredis():
    """This loop's asyncio client (one per process and loop)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(id(loop))
    if client is None:
        client = _clients[id(loop)] = redis.asyncio.Redis.from_url(app.conf.broker_url, socket_timeout=60)
    return client


async def _through(gate):
    r = aredis()
    if await r.blpop(gate, timeout=30) is None:
        raise TimeoutError(f"gate {gate} stayed shut")
    await r.rpush(gate, 1)


@app.task(bind=True)
async def hold(self, key, gate):
    """Note the start (KEY:started), wait for the gate, note the end; returns [own id, pid]."""
    r = aredis()
    await r.rpush(f"{key}:started", self.request.id)
    await _through(gate)
    await r.rpush(f"{key}:ended", self.request.id)
    return [self.request.id, os.getpid()]


@app.task(acks_late=True, reject_on_worker_lost=True)
async def hold_late(key, gate):
    r = aredis()
    await r.rpush(f"{key}:started", "x")
    await _through(gate)
    return os.getpid()


@app.task
def plain_hold(key, gate):
    """A plain def task: it blocks its thread (not the loop) until the gate opens."""
    client = redis.Redis.from_url(app.conf.broker_url, socket_timeout=60)
    try:
        client.rpush(f"{key}:started", "plain")
        if client.blpop(gate, timeout=30) is None:
            raise TimeoutError(f"gate {gate} stayed shut")
        client.rpush(gate, 1)
        return "plain done"
    finally:
        client.close()


@app.task(bind=True)
async def progress(self, key, gate):
    self.update_state(state="PROGRESS", meta={"step": 1})
    await aredis().rpush(f"{key}:started", self.request.id)
    await _through(gate)
    return "finished"


@app.task(bind=True)
def plain_progress(self, key, gate):
    self.update_state(state="PROGRESS", meta={"step": "thread"})
    return plain_hold(key, gate)


@app.task(soft_time_limit=0.3)
async def soft_limited(key):
    try:
        await asyncio.sleep(30)
    finally:  # cancelled at its await point: it may clean up
        await aredis().rpush(key, "cleaned up")


@app.task(time_limit=0.3)
async def hard_limited():
    await asyncio.sleep(30)


@app.task(time_limit=0.3)
async def blocks_the_loop(key):
    await aredis().rpush(f"{key}:started", "blocker")
    time.sleep(30)  # (wrong in an async task: it stops the loop; the parent replaces the process)


@app.task(autoretry_for=(KeyError,), max_retries=2, default_retry_delay=0.05)
async def flaky(key):
    if await aredis().incr(key) < 3:
        raise KeyError(key)
    return "third time"


@app.task
async def double(x):
    await asyncio.sleep(0.01)
    return 2 * x


@app.task
async def total(values):
    return sum(values)


@app.task
async def pid():
    await asyncio.sleep(0.01)
    return os.getpid()


@app.task(rate_limit="5/s")
async def limited():
    return time.time()


# --- hooks and signals: each call notes which request was current (many tasks interleave on one loop) ---
_sync_client = None


def note(*fields):
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(app.conf.broker_url)
    _sync_client.rpush("hooks", "|".join(str(f) for f in fields))


class Hooked(Task):
    def before_start(self, task_id, args, kwargs):
        note("before_start", task_id, self.request.id)

    def on_success(self, retval, task_id, args, kwargs):
        note("on_success", task_id, self.request.id)

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        note("after_return", task_id, self.request.id)


@app.task(base=Hooked, bind=True)
async def hooked(self, key, gate):
    await aredis().rpush(f"{key}:started", self.request.id)
    await _through(gate)
    return self.request.id


@signals.task_postrun.connect
def _postrun(sender=None, task_id=None, task=None, **kwargs):
    if task is not None and task.name == "asyncpool.hooked":
        note("task_postrun", task_id, task.request.id)
