"""Rate-limited tasks for tests/test_ratelimit_cluster.py (settings: MINIQUE_BROKER_URL, TESTAPP_SETTINGS)."""
import json
import os
import time

import redis

from minique import Minique

app = Minique("rlapp", include=["rlapp"])
app.conf.update(json.loads(os.environ.get("TESTAPP_SETTINGS") or "{}"))


def store() -> redis.Redis:
    return redis.Redis.from_url(app.conf.broker_url)


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
