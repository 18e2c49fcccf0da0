"""The arq app of the asyncio-io figure: `arq benchmarks.apps.arq_io.WorkerSettings`.

Imported only inside benchmarks/.arq-venv. arq's defaults except `max_jobs`, raised to the
figure's concurrency (10,000), and its log level (WARNING, as every worker in the benchmarks:
arq's CLI otherwise logs two INFO lines per job).
"""
import os

from arq.connections import RedisSettings

from .io_body import CONCURRENCY, sleep_and_return_start


async def sleeper(ctx, i):
    return await sleep_and_return_start()


class WorkerSettings:
    functions = [sleeper]
    redis_settings = RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])
    max_jobs = CONCURRENCY


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"level": "WARNING", "class": "logging.StreamHandler"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}
