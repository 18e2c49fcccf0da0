"""Rate-limited tasks for tests/test_ratelimit_cluster.py (settings: MINIQUE_BROKER_URL, TESTAPP_SETTINGS)."""
import json
import os
import time

from bookkeeping import store_for

from minique import Minique

app = Minique("rlapp", include=["rlapp"])
app.conf.update(json.loads(os.environ.get("TESTAPP_SETTINGS") or "{}"))


# (redis-py's default read timeout is shorter than the gates' BLPOP waits)
store = store_for(app, socket_timeout=30)


@app.task(rate_limit="5/s")
def limited(key, token):
    """Records when it started: the test checks the spacing of the starts."""
    store().rpush(key, json.dumps([token, time.time()]))
    return token


@app.task(rate_limit="2/s", rate_limit_key=lambda args, kwargs: args[1])
def per_customer(key, customer):
    store().rpush(key, json.dumps([customer, time.time()]))
    return customer


@app.task
def free(key, token):
    store().rpush(key, json.dumps([token, time.time()]))
    return token


@app.task(unique=True, unique_for=60)
def sync_account(account, gate):
    """A unique task (by its arguments) that waits until the test opens `gate` (a Redis list)."""
    store().rpush(f"uniq:ran:{account}", 1)
    store().blpop([gate], timeout=20)
    return account


@app.task(unique=True, unique_until="started")
def report(day, gate):
    store().rpush(f"uniq:report:{day}", 1)
    store().blpop([gate], timeout=20)
    return day


@app.task(unique=True, autoretry_for=(KeyError,), max_retries=1, default_retry_delay=0.2)
def flaky_unique(key):
    """Fails once (KeyError: retried, the key kept), then succeeds."""
    if store().incr(key) == 1:
        raise KeyError(key)
    return "ok"


@app.task(concurrency_limit=2)
def export(key, gate):
    """Counts the runs at once under `key` (the most seen goes to `key`:most), then waits for `gate`."""
    r = store()
    now = r.incr(f"{key}:running")
    r.rpush(f"{key}:seen", now)
    r.rpush(f"{key}:pids", os.getpid())
    r.blpop([gate, f"{gate}:{os.getpid()}"], timeout=20)  # (the second: this run's own gate)
    r.decr(f"{key}:running")
    return now


@app.task(concurrency_limit=1, concurrency_key=lambda args, kwargs: args[0])
def sync_customer(customer, key, gate):
    store().rpush(key, customer)
    store().blpop([gate], timeout=20)
    return customer


@app.task(bind=True, rate_limit="10/s")
def paced(self, key, token):
    """Records (token, its start, the start it reserved: its ETA when it was parked, else its start)."""
    now = time.time()
    reserved = (self.request.headers or {}).get("rate_limit_at") or now
    store().rpush(key, json.dumps([token, now, reserved]))
    return token


@app.task
def flow(key, token):
    store().rpush(key, json.dumps([token, time.time()]))
    return token
