"""The Celery app the benchmark's workers run: `celery -A benchmarks.apps.celery_bench worker`.

Imported only inside benchmarks/.celery-venv. Same tasks and bodies as mq_bench;
Celery's defaults otherwise (prefetch multiplier 4, JSON, results in the same Redis).
"""
import os

from celery import Celery

from . import rtcount
from .bench_body import incr, tick

rtcount.maybe_install()

_url = os.environ["BENCH_REDIS_URL"]
app = Celery("celery_bench", broker=_url, backend=_url, include=["benchmarks.apps.celery_bench"])
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=True)


@app.task(ignore_result=True)
def tick_ignored():
    tick()


@app.task(ignore_result=False)
def tick_stored():
    tick()


@app.task(ignore_result=True)
def incr_ignored():
    incr()


@app.task
def add(x, y):
    return x + y


@app.task
def noop():
    return None


@app.task
def collect(results):
    return len(results)
