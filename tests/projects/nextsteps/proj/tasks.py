import redis

from .celery import app


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def xsum(numbers):
    return sum(numbers)


@app.task
def tick(key, label):
    """Push `label` to the Redis list `key` (a test waits on it)."""
    client = redis.Redis.from_url(app.conf.broker_url)
    try:
        client.rpush(key, label)
    finally:
        client.close()
    return label


@app.on_after_finalize.connect
def setup_more_periodic_tasks(sender, **kwargs):
    # Tasks modules are imported after configuration: this module uses on_after_finalize instead.
    sender.add_periodic_task(0.5, tick.s("proj:ticks:finalized", "finalized"), name="tick after finalize")
