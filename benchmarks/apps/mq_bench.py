"""The minique app the benchmark's workers run: `minique -A benchmarks.apps.mq_bench worker`.

The broker is MINIQUE_BROKER_URL (the runner's private redis-server).
"""
import json
import os

from minique import Minique

from . import rtcount
from .bench_body import incr, tick

rtcount.maybe_install()

app = Minique("mq_bench", include=["benchmarks.apps.mq_bench"])
if os.environ.get("BENCH_SETTINGS"):  # a figure that measures a setting (the runner sets it per job)
    app.conf.update(json.loads(os.environ["BENCH_SETTINGS"]))


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
