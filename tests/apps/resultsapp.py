"""The app of tests/test_results.py: progress states, children, result_extended, in real workers.

Settings come from the environment as testapp's do (MINIQUE_BROKER_URL, TESTAPP_SETTINGS).
"""
import json
import os
import time

from bookkeeping import store_for

from minique import Minique, Task, group

app = Minique("resultsapp", include=["resultsapp"])
app.conf.update(json.loads(os.environ.get("TESTAPP_SETTINGS") or "{}"))
store = store_for(app)


@app.task
def add(x, y):
    return x + y


def _wait_gate(key, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store().blpop(f"{key}:gate", 1):  # 1 s chunks: below redis-py's socket timeout
            return True
    raise TimeoutError(f"nobody opened {key}:gate")


@app.task(bind=True)
def progress(self, key, total=3, timeout=20):
    """Report PROGRESS with a meta dict, then wait until the test pushes to "<key>:gate" (once per step)."""
    for done in range(total):
        self.update_state(state="PROGRESS", meta={"done": done, "total": total})
        _wait_gate(key, timeout)
    return {"done": total}


@app.task(bind=True, soft_time_limit=30)
def progress_soft_limited(self, key, timeout=20):
    """update_state under a soft time limit (SIGALRM is the limit's): one PROGRESS, then the gate."""
    self.update_state(state="PROGRESS", meta={"step": "one"})
    _wait_gate(key, timeout)
    return "ok"


@app.task(bind=True)
def spawn(self, x):
    """Send two tasks and a group: the children of this task."""
    a = add.delay(x, 1)
    b = add.apply_async((x, 2))
    g = group(add.s(x, i) for i in range(3)).apply_async()
    return [a.id, b.id, g.id, [r.id for r in g.results]]


@app.task(bind=True)
def spawn_then_fail(self, x):
    add.delay(x, 1)
    raise ValueError(f"failed after sending ({x})")


@app.task
def noop():
    return None


@app.task
def takes_bytes(data, flag=False):
    """Sent with serializer="msgpack" (bytes in its arguments); its result is stored as json."""
    return len(data)


@app.task
def push_to(value, key):
    """A link or errback that records what it was given under `key`."""
    store().rpush(key, json.dumps(value))
    return value


@app.task
def fail(*args):
    raise ValueError("step failed")


class WithHooks(Task):
    """A task class with a hook: the worker runs its tasks through trace.Run (the request stays current)."""

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        store().rpush(f"after_return:{task_id}", status)


@app.task(bind=True, base=WithHooks)
def spawn_hooked(self, x):
    return add.delay(x, 1).id
