"""Remote control and inspection against real workers (app.control and the CLI)."""
import json
import subprocess
import sys
import time

import pytest

from minique import states
from minique.exceptions import TaskRevokedError
from procs import wait_for


def two_workers(procs, *args):
    return procs.worker("-c", "1", *args), procs.worker("-c", "1", *args)


def replies(answers):
    """[{host: answer}, ...] -> {host: answer}."""
    out = {}
    for a in answers:
        out.update(a)
    return out


def test_ping_all_and_one_destination_and_active_across_workers(procs, client_app, redis_client):
    w1, w2 = two_workers(procs)
    control = client_app.app.control
    assert replies(control.ping(timeout=1.0)) == {w1.hostname: {"ok": "pong"}, w2.hostname: {"ok": "pong"}}
    t0 = time.monotonic()
    assert replies(control.ping(destination=[w2.hostname], timeout=10.0)) == {w2.hostname: {"ok": "pong"}}
    # with a destination, the reply ends the wait, not the timeout: a wait to the end would take 10 s;
    # the bound is half of that, generous for a loaded machine and clear of the 10 s
    assert time.monotonic() - t0 < 5.0
    assert control.inspect(destination=["nobody@nowhere"], timeout=0.3).ping() is None

    running = client_app.hold.delay("two")
    wait_for(lambda: redis_client.llen("two:started"), 10, "the task to start")
    active = control.inspect(destination=[w1.hostname, w2.hostname], timeout=5.0).active()
    assert set(active) == {w1.hostname, w2.hostname}
    busy = [(host, tasks) for host, tasks in active.items() if tasks]
    assert len(busy) == 1 and [t["id"] for t in busy[0][1]] == [running.id]
    redis_client.rpush("two:gate", 1)
    assert running.get(timeout=10) == "two"


def test_inspect_active_reserved_scheduled_registered(procs, client_app, redis_client):
    running = client_app.hold.delay("act")
    queued = [client_app.add.delay(i, i) for i in range(2)]
    later = client_app.add.apply_async((5, 5), countdown=300)
    worker = procs.worker("-c", "1", "--prefetch-multiplier", "4")
    wait_for(lambda: redis_client.llen("act:started"), 10, "the task to start")
    inspect = client_app.app.control.inspect(destination=[worker.hostname], timeout=5.0)

    active = inspect.active()
    assert list(active) == [worker.hostname]
    [task] = active[worker.hostname]
    assert (task["id"], task["name"], task["args"], task["kwargs"]) == (running.id, "testapp.hold", ["act"], {})
    assert task["time_start"] > 0 and task["worker_pid"] in worker.children()
    assert task["delivery_info"]["queue"] == "default"

    reserved = inspect.reserved()[worker.hostname]
    assert sorted(r["id"] for r in reserved) == sorted(q.id for q in queued)
    assert all(r["name"] == "testapp.add" for r in reserved)

    scheduled = inspect.scheduled()[worker.hostname]
    assert [s["request"]["id"] for s in scheduled] == [later.id]
    assert scheduled[0]["eta"] > time.time() + 200

    registered = inspect.registered()[worker.hostname]
    assert "testapp.add" in registered and "testapp.hold" in registered
    assert inspect.active_queues() == {worker.hostname: [{"name": "default"}]}

    redis_client.rpush("act:gate", 1)
    assert running.get(timeout=10) == "act"
    assert [q.get(timeout=10) for q in queued] == [0, 2]
    stats = inspect.stats()[worker.hostname]
    assert stats["total"]["testapp.add"] == 2 and stats["total"]["testapp.hold"] == 1
    assert stats["processed"] == 3
    assert stats["pool"]["max-concurrency"] == 1


def test_pool_grow_and_shrink_change_stats(procs, client_app, redis_client):
    worker = procs.worker("-c", "1", "--prefetch-multiplier", "1")
    control = client_app.app.control
    inspect = control.inspect(destination=[worker.hostname], timeout=2.0)

    def pool():
        return inspect.stats()[worker.hostname]["pool"]

    answer = replies(control.pool_grow(2, destination=[worker.hostname], reply=True, timeout=2.0))
    assert answer[worker.hostname]["ok"] == "pool will grow"
    assert pool()["max-concurrency"] == 3
    wait_for(lambda: len(pool()["processes"]) == 3 and len(worker.children()) == 3, 10, "two more processes")
    # A process signalled before it installed its own handlers would not stop (see the report on pool.py):
    # wait until each of the three has run a task (prefetch 1: one message per process).
    held = [client_app.hold.delay("pg") for _ in range(3)]
    wait_for(lambda: len(set(redis_client.lrange("pg:started", 0, -1))) == 3, 10, "a task in each process")
    redis_client.rpush("pg:gate", 1, 1, 1)
    assert [h.get(timeout=10) for h in held] == ["pg"] * 3
    answer = replies(control.pool_shrink(1, destination=[worker.hostname], reply=True, timeout=2.0))
    assert answer[worker.hostname]["ok"] == "pool will shrink"
    assert pool()["max-concurrency"] == 2
    wait_for(lambda: len(pool()["processes"]) == 2 and len(worker.children()) == 2, 10, "one process fewer")
    assert client_app.add.delay(2, 2).get(timeout=10) == 4
    answer = replies(control.pool_shrink(5, destination=[worker.hostname], reply=True, timeout=2.0))
    assert "error" in answer[worker.hostname]


def test_shutdown_stops_only_the_destination(procs, client_app):
    w1, w2 = two_workers(procs)
    control = client_app.app.control
    answer = replies(control.shutdown(destination=[w1.hostname], reply=True, timeout=2.0))
    assert answer == {w1.hostname: {"ok": "shutting down"}}
    assert w1.wait(15) == 0
    assert replies(control.ping(timeout=0.5)) == {w2.hostname: {"ok": "pong"}}
    assert client_app.add.delay(3, 4).get(timeout=10) == 7


def test_revoke_waiting_and_terminate_running(procs, client_app, redis_client):
    waiting = client_app.add.apply_async((1, 1), countdown=0.5)
    client_app.app.control.revoke(waiting.id)
    worker = procs.worker("-c", "1")
    with pytest.raises(TaskRevokedError):
        waiting.get(timeout=10)
    assert waiting.state == states.REVOKED
    running = client_app.hold.delay("rv")
    wait_for(lambda: redis_client.llen("rv:started"), 10, "the task to start")
    answer = replies(client_app.app.control.revoke(running.id, destination=[worker.hostname], terminate=True,
                                                  reply=True, timeout=2.0))
    assert running.id in answer[worker.hostname]["ok"]
    with pytest.raises(TaskRevokedError):
        running.get(timeout=10)
    assert running.state == states.REVOKED
    assert client_app.add.delay(1, 2).get(timeout=10) == 3


def test_rate_limit_spaces_task_starts(procs, client_app, redis_client):
    worker = procs.worker("-c", "2")
    control = client_app.app.control
    dest = [worker.hostname]
    answer = replies(control.rate_limit("testapp.record", "10/s", reply=True, timeout=1.0))
    assert answer == {worker.hostname: {"ok": "new rate limit set successfully"}}
    assert replies(control.rate_limit("testapp.nope", "1/s", dest, reply=True, timeout=1.0))[worker.hostname]["error"]
    t0 = time.monotonic()
    results = [client_app.record.delay("rl", i) for i in range(6)]
    [r.get(timeout=10) for r in results]
    # 10/s per worker: each of the 2 processes starts one task per 0.2 s, so 6 starts need at least
    # 0.4 s (the first one of each process starts at once). A lower bound: load only lengthens it.
    assert time.monotonic() - t0 >= 0.4
    stats = control.inspect(dest, timeout=1.0).stats()[worker.hostname]
    assert stats["rate_limits"] == {"testapp.record": 10.0}
    assert replies(control.rate_limit("testapp.record", 0, dest, reply=True, timeout=1.0))[worker.hostname]["ok"] \
        == "rate limit disabled successfully"
    t0 = time.monotonic()
    [r.get(timeout=10) for r in [client_app.record.delay("rl2", i) for i in range(30)]]
    # No limit now. Were 10/s still in force, 30 starts would take at least 2.8 s (15 per process, one
    # per 0.2 s); without it they take milliseconds. The bound is half of 2.8 s: generous for a loaded
    # machine and clear of the limited case.
    assert time.monotonic() - t0 < 1.4


def run_cli(procs, *args, timeout=30):
    return subprocess.run([sys.executable, "-m", "minique.cli", "-A", "testapp", *args], env=procs.env(),
                          cwd=procs.tmp_path, capture_output=True, text=True, timeout=timeout)


def test_cli_inspect_and_control(procs, client_app):
    w1, w2 = two_workers(procs)
    out = run_cli(procs, "inspect", "ping", "-t", "0.5", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {w1.hostname: {"ok": "pong"}, w2.hostname: {"ok": "pong"}}
    out = run_cli(procs, "inspect", "ping", "-t", "0.5")  # Celery's human format: one block per node
    assert out.returncode == 0, out.stderr
    pongs = {f"-> {w.hostname}: OK\n    pong\n" for w in (w1, w2)}
    assert out.stdout in {a + b + "\n2 nodes online.\n" for a in pongs for b in pongs - {a}}
    out = run_cli(procs, "inspect", "stats", "-d", w1.hostname, "--json")
    assert out.returncode == 0, out.stderr
    assert list(json.loads(out.stdout)) == [w1.hostname]
    out = run_cli(procs, "inspect", "registered", "-d", w1.hostname, "--json")
    assert "testapp.add" in json.loads(out.stdout)[w1.hostname]
    out = run_cli(procs, "inspect", "registered", "-d", w1.hostname)
    assert out.stdout.startswith(f"-> {w1.hostname}: OK\n    [\n") and '\n      "testapp.add",\n' in out.stdout
    out = run_cli(procs, "control", "pool_grow", "1", "-d", w2.hostname, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {w2.hostname: {"ok": "pool will grow", "size": 2}}
    out = run_cli(procs, "control", "rate_limit", "testapp.add", "5/m", "-d", w2.hostname)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"-> {w2.hostname}: OK\n    new rate limit set successfully\n"
    out = run_cli(procs, "control", "pool_shrink", "5", "-d", w2.hostname)  # the worker refuses: ERROR
    assert out.stdout == f"-> {w2.hostname}: ERROR\n    cannot shrink the pool below 1 process (size 2)\n"
    out = run_cli(procs, "control", "shutdown", "-d", w1.hostname)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"-> {w1.hostname}: OK\n    shutting down\n"
    assert w1.wait(15) == 0
    for cmd in (("inspect", "ping"), ("control", "ping")):
        out = run_cli(procs, *cmd, "-d", w1.hostname, "-t", "0.3")
        assert out.returncode == 1 and out.stdout == ""
        assert out.stderr.strip() == "Error: No nodes replied within time constraint."
        out = run_cli(procs, *cmd, "-d", w1.hostname, "-t", "0.3", "--json")
        assert out.returncode == 1 and json.loads(out.stdout) == {}


@pytest.mark.parametrize("value", [0, -1, "7d", None, True, float("inf"), float("nan")])
def test_a_bad_worker_revoke_expires_is_refused_before_anything_is_written(value):
    """A unit test: the refusal comes before any connection (the unit tier fails a test that opens one)."""
    from minique import Minique
    from minique.exceptions import ConfigurationError
    app = Minique("t", broker_url="redis://127.0.0.1:9/0")
    app.conf.worker_revoke_expires = value
    with pytest.raises(ConfigurationError, match="worker_revoke_expires must be seconds > 0, not "):
        app.control.revoke("some-id")
