"""The app the integration tests run in real worker subprocesses.

Settings come from the environment: MINIQUE_BROKER_URL (and MINIQUE_RESULT_BACKEND),
plus TESTAPP_SETTINGS, a JSON object of extra settings (e.g. {"task_acks_late": true}).
Tasks record what they do under Redis keys the test names, so tests can check the books.
"""
import json
import os
import signal
import time

import redis
from bookkeeping import store_for

from minique import Minique
from minique.exceptions import SoftTimeLimitExceeded

app = Minique("testapp", include=["testapp"])
app.conf.update(json.loads(os.environ.get("TESTAPP_SETTINGS") or "{}"))
store = store_for(app)


@app.task
def add(x, y):
    return x + y


@app.task
def noop():
    return None


@app.task
def typed_echo(*args, **kwargs):
    """Its arguments back, with the type names it received them as (JSON with types, tests/test_worker.py)."""
    return [list(args), kwargs, [type(a).__name__ for a in args], {k: type(v).__name__ for k, v in kwargs.items()}]


@app.task
def record(key, token):
    """Append `token` to the list `key`: one entry per execution."""
    store().rpush(key, token)
    return token


@app.task
def sleep_record(key, token, seconds):
    store().rpush(f"{key}:started", token)
    time.sleep(seconds)
    store().rpush(key, token)
    return token


@app.task(bind=True)
def whoami(self):
    return {"id": self.request.id, "retries": self.request.retries, "root_id": self.request.root_id,
            "parent_id": self.request.parent_id, "hostname": self.request.hostname,
            "queue": self.request.delivery_info["queue"], "pid": os.getpid()}


@app.task
def fail(message="boom"):
    raise ValueError(message)


@app.task
def die(key=None):
    """Kill our own process mid-task, like a segfault or the OOM killer."""
    if key:
        store().rpush(key, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


@app.task
def die_once(key):
    """Dies on its first execution only (to test redelivery)."""
    if store().incr(key) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@app.task(autoretry_for=(ConnectionError,), retry_backoff=0.1, retry_jitter=False, max_retries=3)
def flaky(key, failures):
    n = store().incr(key)
    if n <= failures:
        raise ConnectionError(f"attempt {n} fails")
    return n


@app.task(bind=True, max_retries=2, default_retry_delay=0.05)
def retry_forever(self, key):
    store().incr(key)
    raise self.retry(exc=KeyError("still failing"))


@app.task(bind=True)
def retry_no_exc(self, key):
    store().incr(key)
    raise self.retry(countdown=0.05, max_retries=1)


@app.task(soft_time_limit=0.3)
def soft_limited():
    try:
        time.sleep(5)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


@app.task(time_limit=0.5)
def hard_limited():
    time.sleep(10)


@app.task
def pid():
    return os.getpid()


@app.task
def big_memory(kib):
    blob = bytearray(kib * 1024)
    return len(blob) and os.getpid()


@app.task
def identity(value):
    return value


@app.task
def tsum(values):
    return sum(values)


@app.task
def mul(x, y):
    return x * y


@app.task(bind=True)
def replace_with_add(self, x):
    self.replace(add.s(x, 100))


@app.task
def errback_record(task_id):
    store().rpush("errbacks", task_id)
    return task_id


@app.task(acks_late=True)
def late_sleep(key, token, seconds):
    store().rpush(f"{key}:started", token)
    time.sleep(seconds)
    store().rpush(key, token)
    return token


@app.task(serializer="msgpack")
def make_bytes(n):
    return bytes(range(n))


@app.task
def count_calls(key, value=None):
    """Count executions under `key` and pass `value` through (for exactly-once checks)."""
    store().incr(key)
    return value


@app.task
def collect(results, key="collect"):
    """A chord callback that records each time it runs."""
    store().rpush(key, len(results))
    return results


@app.task
def push_to(value, key):
    """Link target: the parent's result comes first, as Celery passes it."""
    store().rpush(key, value)
    return value


# --- reliability and delivery tests (tests/test_reliability.py, tests/test_delivery.py) ----------------
# Each execution leaves a line in Redis: "<key>:started" gets "token|pid|delivery_count|run" when the
# body starts, "<key>" gets "token|run" when it ends; "run" is new for every execution of a body, so a
# line written twice (a client retrying a write whose reply it lost) is not taken for a second execution.
# The books (tests/procs.py: Books) are these lists.

_durable_store = None


def durable_store():
    """A client that rides out a Redis restart (retries for ~30 s) for tasks that must record anyway."""
    global _durable_store
    if _durable_store is None or _durable_store.connection_pool.pid != os.getpid():
        from redis.backoff import ConstantBackoff
        from redis.retry import Retry
        _durable_store = redis.Redis.from_url(
            app.conf.broker_url, socket_timeout=10, socket_connect_timeout=2,
            retry=Retry(ConstantBackoff(0.1), 300),
            retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError])
    return _durable_store


def _started(r, key, token, request):
    import uuid
    run = uuid.uuid4().hex[:12]
    r.rpush(f"{key}:started", f"{token}|{os.getpid()}|{request.delivery_count or 0}|{run}")
    return run


def _book(r, request, key, token, seconds):
    run = _started(r, key, token, request)
    if seconds:
        time.sleep(seconds)
    r.rpush(key, f"{token}|{run}")
    return token


@app.task(bind=True)
def book(self, key, token, seconds=0.0):
    """One unit of load: record the start, work `seconds`, record the end."""
    return _book(store(), self.request, key, token, seconds)


@app.task(bind=True)
def book_durable(self, key, token, seconds=0.0):
    """book() whose records survive a Redis restart in the middle (for the Redis-restart test)."""
    return _book(durable_store(), self.request, key, token, seconds)


@app.task(bind=True, acks_late=True)
def book_durable_late(self, key, token, seconds=0.0):
    """book_durable() acked after its body: a worker cut off while it runs it leaves it to be redelivered
    (the partition test, tests/test_partition.py)."""
    return _book(durable_store(), self.request, key, token, seconds)


@app.task(bind=True)
def gated(self, key, token, timeout=30):
    """Record the start, then wait until the test pushes to "<key>:gate" (so a test can act mid-task)."""
    r = store()
    run = _started(r, key, token, self.request)
    deadline = time.time() + timeout
    while r.blpop(f"{key}:gate", 1) is None and time.time() < deadline:  # short waits: under socket_timeout
        pass
    r.rpush(key, f"{token}|{run}")
    return token


@app.task(bind=True)
def on_time(self, key, token):
    """Record when the body started next to the ETA it was given."""
    now = time.time()
    store().rpush(key, json.dumps([token, now, self.request.eta, os.getpid()]))
    return token


@app.task(bind=True, max_retries=3)
def retry_then_report(self, key, times, countdown=0.05):
    """Retry `times` times, then report the request as the last run saw it."""
    n = store().incr(key)
    if n <= times:
        raise self.retry(exc=KeyError(f"attempt {n}"), countdown=countdown)
    return {"id": self.request.id, "retries": self.request.retries, "root_id": self.request.root_id,
            "parent_id": self.request.parent_id, "runs": n}


@app.task(autoretry_for=(ConnectionError,), retry_backoff=0.2, retry_jitter=False, max_retries=3)
def flaky_timed(key, failures):
    """autoretry_for with a back-off; records the time of every attempt."""
    r = store()
    r.rpush(key, repr(time.time()))
    if r.llen(key) <= failures:
        raise ConnectionError("not yet")
    return r.llen(key)


@app.task(time_limit=0.5)
def hard_limited_record(key):
    store().rpush(key, os.getpid())
    time.sleep(10)


@app.task(bind=True)
def die_always(self, key):
    """Record the attempt with its delivery count, then die like a segfault."""
    store().rpush(key, self.request.delivery_count or 0)
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(bind=True)
def book_and_grow(self, key, token, kib):
    """book() that also leaves `kib` more KiB allocated in its process (to trigger memory recycling)."""
    blob = bytearray(kib * 1024)
    blob[::4096] = b"x" * len(blob[::4096])  # touch every page: resident, not just reserved
    _ballast.append(blob)
    run = _started(store(), key, token, self.request)
    store().rpush(key, f"{token}|{run}")
    return os.getpid()


_ballast = []


# --- metrics, control and dashboard tests (tests/test_metrics.py, test_control.py, test_dashboard.py) ---

@app.task
def hold(key, timeout=20):
    """Record the start under "<key>:started", then wait until the test pushes to "<key>:gate"."""
    store().rpush(f"{key}:started", os.getpid())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not store().blpop(f"{key}:gate", 1):
        pass  # blocks in 1 s chunks: redis-py's default socket timeout is 5 s
    return key


@app.task
def fail_first(key):
    """Fails on its first run only (keyed on a Redis counter): to retry it from the dashboard."""
    n = store().incr(key)
    if n == 1:
        raise RuntimeError(f"first attempt fails ({key})")
    return n


# --- settle tests (tests/test_settle_worker.py) -----------------------------------------------------

@app.task
def fail_counted(key):
    """Record the run, then fail."""
    store().rpush(key, os.getpid())
    raise ValueError(f"failed on purpose ({key})")


@app.task
def ignore_counted(key):
    """Record the run, then raise Ignore."""
    from minique.exceptions import Ignore
    store().rpush(key, os.getpid())
    raise Ignore()


@app.task
def circular():
    """Return a value no serializer can encode (a list that holds itself)."""
    value = [1]
    value.append(value)
    return value


# --- security model tests (tests/test_exception_rebuild.py, test_caps.py, test_replay.py, test_acl.py) -----

@app.task
def fail_big(n, chunk="x"):
    """Raise a ValueError whose message is `n` characters (a 1 MB message must not become 1 MB everywhere)."""
    raise ValueError(chunk * n)


@app.task
def fail_with_own_class(message):
    """Raise an exception whose class lives in a module only this task imports (testapp_errors)."""
    import testapp_errors
    raise testapp_errors.OwnError(message)


@app.task(bind=True)
def reject_requeue_once(self, key):
    """Reject(requeue=True) on the first run, succeed on the next (counted under `key`)."""
    from minique.exceptions import Reject
    n = store().incr(key)
    if n == 1:
        raise Reject("not now", requeue=True)
    return n


@app.task(bind=True, max_retries=5)
def retry_n(self, n):
    """Retry `n` times (touching no Redis key of its own), then return the retries made."""
    if self.request.retries < n:
        raise self.retry(countdown=0.05)
    return self.request.retries
