"""One pool consumer's cost per task, in-process: `python -m benchmarks.consumer_cost [N]`.

Drains N no-op tasks (results ignored) through one `Consumer` with what a real pool process has
(events, a rate limiter with no limits, a slot) on a private redis-server over a unix socket, and
prints tasks/s and CPU per task. Under callgrind, the marginal instructions per task between two
sizes is a count that repeats where times move by 10-20% (how docs/benchmarks.md compares code):

    valgrind --tool=callgrind --trace-children=no python -m benchmarks.consumer_cost 4000
    valgrind --tool=callgrind --trace-children=no python -m benchmarks.consumer_cost 12000
    (totals difference) / 8000
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time


def main(n: int) -> None:
    from minique import Minique
    from minique.embedded import find_redis_server
    from minique.events import Events
    from minique.worker.consumer import Consumer
    from minique.worker.ratelimit import RateLimiter, RateLimitTable
    from minique.worker.slots import SlotTable

    sock = os.path.join(tempfile.mkdtemp(), "redis.sock")
    server = subprocess.Popen([find_redis_server(), "--port", "0", "--unixsocket", sock, "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.01)
        app = Minique("cost", broker=f"unix://{sock}", backend=f"unix://{sock}")
        app.conf.task_ignore_result = True

        @app.task(name="noop")
        def noop() -> None:
            return None

        app.broker.ensure_queues(["default"])
        noop.delay_many([()] * n)
        table = RateLimitTable()
        table.write({})
        consumer = Consumer(app, "cost", ["default"], 4, "cost@host", slot=SlotTable(1)[0], events=Events("cost"),
                            limiter=RateLimiter(table), max_tasks=n)
        t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        consumer.run()
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        print(f"{n / (t1 - t0):,.0f} tasks/s, {cpu / n * 1e6:.1f} us CPU per task ({n:,} tasks)")
        app.close()
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
