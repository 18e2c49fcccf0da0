"""The taskiq app of the asyncio-io figure: `taskiq worker benchmarks.apps.taskiq_io:broker`.

Imported only inside benchmarks/.taskiq-venv. taskiq-redis's RedisStreamBroker (a stream and a
consumer group: messages are acknowledged after the result is saved, taskiq's default ack type;
its ListQueueBroker does not acknowledge, its PubSubBroker broadcasts) with RedisAsyncResultBackend
(results awaited by the client); their defaults otherwise. The worker's --max-async-tasks is
raised to the figure's concurrency on its command line.
"""
import os

from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from .io_body import sleep_and_return_start

_url = os.environ["BENCH_REDIS_URL"]
broker = RedisStreamBroker(url=_url).with_result_backend(RedisAsyncResultBackend(redis_url=_url))


@broker.task
async def sleeper(i: int) -> float:
    return await sleep_and_return_start()
