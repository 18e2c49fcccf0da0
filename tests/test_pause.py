"""Queue pause/resume (issue 20): kept in Redis, obeyed by running workers at once and by workers started
later; what was reserved before still runs; other queues go on; status, the metric and the CLI show it."""
from __future__ import annotations

import subprocess
import sys

from minique import keys


def test_a_paused_queue_is_not_taken_from_until_resumed(procs, client_app, redis_client):
    """With the prefork pool a pause is immediate: once pause() has the workers' answers, no message sent
    to the queue is taken (the parent wakes its processes out of their blocking wait with SIGUSR2). (A
    thread pool's thread may read the old queues for up to a second: docs/worker.md.)"""
    app = client_app.app
    worker = procs.worker("-Q", "default,other", "-c", "2")
    assert client_app.add.delay(1, 1).get(timeout=10) == 2  # the worker is up and reading both queues
    # (destination: the reply returns as soon as this worker answered, well within its processes' 1 s wait)
    replies = app.control.pause("default", destination=[worker.hostname], reply=True, timeout=5)
    assert replies == [{worker.hostname: {"ok": "paused: default"}}]
    waiting = client_app.record.delay("p:default", "a")
    other = client_app.record.apply_async(("p:other", "b"), queue="other")
    assert other.get(timeout=10) == "b"          # the other queue goes on...
    assert waiting.state == "PENDING" and redis_client.llen("p:default") == 0   # ...this one waits
    assert app.broker.length("default", 0) == 1
    assert app.control.paused() == ["default"]
    app.control.resume("default", reply=True, timeout=5)
    assert waiting.get(timeout=10) == "a"


def test_a_worker_started_later_obeys_the_pause_and_the_cli_shows_it(procs, client_app, redis_client):
    app = client_app.app

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "minique.cli", "-A", "testapp", *args], env=procs.env(),
                              cwd=procs.tmp_path, capture_output=True, text=True, timeout=30)

    paused = cli("control", "pause", "default")
    assert paused.returncode == 0 and "queue default paused (no worker answered" in paused.stderr
    assert redis_client.sismember(keys.PAUSED, "default")
    waiting = client_app.record.delay("p2:default", "a")
    worker = procs.worker("-Q", "default,other", "-c", "1")
    assert "paused queues (no new messages taken from them): default" in worker.log()
    assert client_app.record.apply_async(("p2:other", "b"), queue="other").get(timeout=10) == "b"
    assert waiting.state == "PENDING"
    status = cli("status")
    assert status.returncode == 0 and any(line.startswith("default") and line.endswith("paused")
                                          for line in status.stdout.splitlines()), status.stdout
    resumed = cli("control", "resume", "default")
    assert resumed.returncode == 0 and f"-> {worker.hostname}: OK" in resumed.stdout, resumed.stdout
    assert waiting.get(timeout=10) == "a"
    assert app.control.paused() == []
