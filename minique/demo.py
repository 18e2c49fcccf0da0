"""A runnable end-to-end example: `python -m minique.demo`.

Starts a private Redis (embedded, under ./.minique-demo unless MINIQUE_BROKER_URL is
set), a real `minique worker` process, sends a task, a chain, a group and a chord,
prints the results, and shuts everything down cleanly.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import List

from minique import Minique, chord, group
from minique.config import mask_url

DEFAULT_URL = "redis+embedded://./.minique-demo"
app = Minique("minique.demo", broker=os.environ.get("MINIQUE_BROKER_URL", DEFAULT_URL))


# named demo.* (not minique.demo.*): the worker's banner leaves minique.* out as minique's own tasks
@app.task(name="demo.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="demo.mul")
def mul(x: int, y: int) -> int:
    return x * y


@app.task(name="demo.total")
def total(values: List[int]) -> int:
    return sum(values)


def main() -> int:
    env = dict(os.environ, MINIQUE_BROKER_URL=app.conf.broker_url)
    worker = subprocess.Popen([sys.executable, "-m", "minique.cli", "-A", "minique.demo", "worker", "-c", "2",
                               "-l", "warning"], env=env)
    try:
        tasks = sorted(name for name in app.tasks if name.startswith("demo."))
        print(f"minique demo: broker {mask_url(app.conf.broker_url)}, tasks {', '.join(tasks)}")
        started = time.time()
        print("add(2, 3)                       =", add.delay(2, 3).get(timeout=30))
        print("add(1, 2) | add(3) | mul(10)    =", (add.s(1, 2) | add.s(3) | mul.s(10)).delay().get(timeout=10))
        print("group(add(i, i) for i in 0..4)  =", group(add.s(i, i) for i in range(5)).delay().get(timeout=10))
        print("chord(mul(i, i) ..) -> total    =", chord(mul.s(i, i) for i in range(10))(total.s()).get(timeout=10))
        print(f"done in {time.time() - started:.2f}s")
        return 0
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        if app.conf.broker_url == DEFAULT_URL:
            from .embedded import stop
            stop(DEFAULT_URL)


if __name__ == "__main__":
    sys.exit(main())
