"""The minique app of the asyncio-io figure: `minique -A benchmarks.apps.mq_io worker -P asyncio -Q io`.

An `async def` task on its own queue; the broker is MINIQUE_BROKER_URL, results in the same Redis.
"""
from minique import Minique

from .io_body import QUEUE, sleep_and_return_start

app = Minique("mq_io", include=["benchmarks.apps.mq_io"])
app.conf.task_default_queue = QUEUE


@app.task
async def sleeper(i):
    return await sleep_and_return_start()
