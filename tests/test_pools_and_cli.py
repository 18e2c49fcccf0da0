"""Other pools, the Lists broker under a real worker, the CLI's housekeeping commands, the demo."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minique import chord, group
from minique.exceptions import WorkerLostError

LISTS = json.dumps({"broker_transport_options": {"queue_type": "lists"}})


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_thread_and_solo_pools(procs, client_app, pool):
    procs.worker("-P", pool, "-c", "2")
    assert group(client_app.add.s(i, 1) for i in range(10)).apply_async().get(timeout=10) == list(range(1, 11))


@pytest.mark.fault  # kills a pool child
def test_lists_broker_worker_runs_tasks_and_canvas(procs, client_app, monkeypatch):
    monkeypatch.setenv("TESTAPP_SETTINGS", LISTS)
    client_app.app.conf.broker_transport_options = {"queue_type": "lists"}
    client_app.app._reset()
    procs.worker("-c", "2", settings=LISTS)
    assert client_app.add.delay(1, 2).get(timeout=10) == 3
    assert chord([client_app.add.s(i, i) for i in range(5)])(client_app.tsum.s()).get(timeout=10) == 20
    with pytest.raises(WorkerLostError):
        client_app.die.delay().get(timeout=15)
    assert client_app.add.delay(2, 2).get(timeout=10) == 4


def run_cli(procs, *args, input=None):
    return subprocess.run([sys.executable, "-m", "minique.cli", "-A", "testapp", *args], env=procs.env(),
                          cwd=procs.tmp_path, capture_output=True, text=True, timeout=30, input=input)


def test_status_purge_and_dlq_commands(procs, client_app, redis_client):
    for i in range(3):
        client_app.add.delay(i, i)
    client_app.add.apply_async((1, 1), countdown=60)
    out = run_cli(procs, "status")
    assert out.returncode == 0, out.stderr
    assert "default" in out.stdout and " 3 " in out.stdout
    assert run_cli(procs, "purge", input="n\n").returncode != 0  # asks, and "no" aborts
    out = run_cli(procs, "purge", "-f")
    assert "Purged 4 message(s)" in out.stdout
    redis_client.xadd("minique:{default}:p0", {"m": b"junk"})
    procs.worker("-c", "1")
    client_app.add.delay(5, 5).get(timeout=10)
    out = run_cli(procs, "dlq", "list")
    assert "undecodable" in out.stdout
    entry_id = out.stdout.split()[0]
    assert "Replayed 1" in run_cli(procs, "dlq", "replay", entry_id).stdout
    out = run_cli(procs, "dlq", "purge", "-f")
    assert out.returncode == 0


def test_cli_errors_are_clear(procs):
    out = subprocess.run([sys.executable, "-m", "minique.cli", "-A", "no_such_module", "status"], env=procs.env(),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "cannot import app module 'no_such_module'" in out.stderr
    out = run_cli(procs, "call", "testapp.add", "--args", "not json")
    assert out.returncode != 0 and "not JSON" in out.stderr
    # a broken setting, whichever command meets it, is one clear line
    for command, settings, said in (("worker", {"worker_early_ack_window": -1}, "worker_early_ack_window must be"),
                                    ("worker", {"worker_early_ack_window": "5ms"}, "worker_early_ack_window must be"),
                                    ("worker", {"broker_transport_options": {"queue_type": "nope"}},
                                     "unknown queue_type 'nope'"),
                                    ("beat", {"beat_schedule": {"x": "t.task"}}, "beat_schedule entry 'x'")):
        out = subprocess.run([sys.executable, "-m", "minique.cli", "-A", "testapp", command], cwd=procs.tmp_path,
                             env=procs.env(json.dumps(settings)), capture_output=True, text=True, timeout=30)
        assert out.returncode != 0 and said in out.stderr, (command, settings, out.stderr[-500:])
        assert "Traceback" not in out.stderr


@pytest.mark.integration  # runs the CLI as a process
def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "minique.cli", "--version"], capture_output=True, text=True, timeout=30)
    assert "minique, version" in out.stdout
    out = subprocess.run([sys.executable, "-m", "minique.cli", "worker", "--help"], capture_output=True, text=True,
                         timeout=30)
    for flag in ("-Q", "--concurrency", "--pool", "--loglevel", "--hostname", "--prefetch-multiplier",
                 "--max-tasks-per-child", "--max-memory-per-child", "--time-limit", "--soft-time-limit", "-B", "-E",
                 "--metrics-port"):
        assert flag in out.stdout


@pytest.mark.integration  # runs the CLI as a process
@pytest.mark.timeout(120)
def test_quick_start_demo_runs_on_an_embedded_redis(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIQUE_BROKER")}
    out = subprocess.run([sys.executable, "-m", "minique.demo"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=100)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "chord(mul(i, i) ..) -> total    = 285" in out.stdout
    assert out.stdout.startswith("minique demo: broker redis+embedded://./.minique-demo, "
                                 "tasks demo.add, demo.mul, demo.total\n")
    assert "[tasks]\n  . demo.add\n  . demo.mul\n  . demo.total\n" in out.stderr  # the worker's banner
    data = tmp_path / ".minique-demo"  # the AOF is persisted: a directory since Redis 7, one file before
    assert (data / "appendonlydir").exists() or (data / "appendonly.aof").exists()


@pytest.mark.unit
def test_the_demo_folder_is_git_ignored():
    ignored = (Path(__file__).parent.parent / ".gitignore").read_text().splitlines()
    assert "/.minique-demo/" in ignored


def test_worker_with_embedded_beat(procs, client_app, redis_client):
    settings = json.dumps({"beat_schedule": {"tick": {"task": "testapp.record", "schedule": 0.2,
                                                      "args": ["ticks", "t"]}}})
    worker = procs.worker("-c", "1", "-B", settings=settings)
    from procs import wait_for
    wait_for(lambda: redis_client.llen("ticks") >= 3, 15, "three beat ticks run by the worker")
    worker.signal(15)
    assert worker.wait(15) == 0
    assert redis_client.get("minique:lock:beat") is None  # the lease was released on shutdown


def test_json_logs_carry_task_fields(procs, client_app):
    worker = procs.worker("-c", "1", "--log-json")
    r = client_app.add.delay(1, 1)
    r.get(timeout=10)
    from procs import wait_for
    line = wait_for(lambda: next((ln for ln in worker.log().splitlines() if r.id in ln), None), 10, "the log line")
    record = json.loads(line)
    assert record["task_id"] == r.id and record["task_name"] == "testapp.add" and record["event"] == "succeeded"
