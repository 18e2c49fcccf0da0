"""The command line on a bad day: Redis missing, a broken setting, a typo. Each is one line on stderr and a
non-zero exit, never a traceback (unless asked for) or a password; a worker started before Redis waits for it.

Every process here is the real `minique` CLI (python -m minique.cli) against a real redis-server.
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from procs import APPS, Processes, drop_testapp, import_testapp, wait_for
from redis_server import RedisServer

PASSWORD = "s3cret-pw"
# a Redis user with a password, the default user left open (RedisServer's readiness PING needs it)
ACL_USER = ("--user", "worker", "on", f">{PASSWORD}", "~*", "&*", "+@all")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(url: str, settings: dict = None) -> dict:
    env = dict(os.environ, MINIQUE_BROKER_URL=url, PYTHONPATH=os.pathsep.join([str(APPS),
                                                                                os.environ.get("PYTHONPATH", "")]))
    env.pop("MINIQUE_RESULT_BACKEND", None)
    env.pop("MINIQUE_METRICS_HOST", None)
    env["TESTAPP_SETTINGS"] = json.dumps(settings or {})
    return env


def cli(env: dict, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minique.cli", *args], env=env, cwd=APPS, capture_output=True,
                          text=True, timeout=timeout)


def error_line(out: subprocess.CompletedProcess) -> str:
    """The one `Error:` line of a failed command (stderr may also hold the worker's log lines)."""
    assert out.returncode != 0, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out.stderr
    return errors[0]


def only_line(out: subprocess.CompletedProcess) -> str:
    """A one-shot command's failure: stderr is exactly one line."""
    line = error_line(out)
    assert out.stderr.strip() == line, out.stderr
    return line


# --- Redis not there ----------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.timeout(90)
def test_worker_started_before_redis_waits_for_it_and_then_runs_tasks(tmp_path, monkeypatch):
    server = RedisServer(tmp_path / "late-redis", port=free_port(), extra_args=ACL_USER)
    url = f"redis://worker:{PASSWORD}@127.0.0.1:{server.port}/0"
    procs = Processes(tmp_path, url)
    testapp = None
    try:
        worker = procs.worker("-c", "1", wait=False)
        # no Redis yet: the worker says so and when it tries again, and stays up
        wait_for(lambda: worker.log().count("Trying again in") >= 2, 20, "two retry lines in the worker's log")
        assert worker.popen.poll() is None, worker.log()
        log = worker.log()
        assert "Cannot connect to redis://worker:***@127.0.0.1" in log and "Trying again in 0.50 seconds" in log
        server.start()
        procs.wait_ready(worker, timeout=30)
        testapp = import_testapp(monkeypatch, url)
        assert testapp.add.delay(2, 3).get(timeout=15) == 5
        log = worker.log()
        assert f"broker: redis://worker:***@127.0.0.1:{server.port}/0" in log  # the banner
        assert PASSWORD not in log
    finally:
        procs.close()
        drop_testapp(testapp)
        server.kill()


@pytest.mark.integration
@pytest.mark.parametrize("settings, said", [
    ({"broker_connection_retry_on_startup": False}, None),
    ({"broker_connection_max_retries": 1}, "Giving up on redis://worker:***@"),
])
def test_worker_without_redis_fails_with_one_line_when_told_not_to_wait(settings, said):
    url = f"redis://worker:{PASSWORD}@127.0.0.1:{free_port()}/0"  # nothing listens there
    out = cli(env_for(url, settings), "-A", "testapp", "worker", "-c", "1")
    line = error_line(out)
    assert line.startswith("Error: cannot reach Redis at redis://worker:***@127.0.0.1:"), line
    assert "(broker_url)" in line and "MINIQUE_BROKER_URL" in line
    assert PASSWORD not in out.stdout + out.stderr
    if said is None:
        assert "Trying again" not in out.stderr
    else:
        assert out.stderr.count("Trying again") == 1 and said in out.stderr


@pytest.mark.integration
def test_a_worker_waiting_for_redis_stops_at_once_on_sigterm(tmp_path):
    procs = Processes(tmp_path, f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        worker = procs.worker("-c", "1", wait=False)
        wait_for(lambda: "Trying again in" in worker.log(), 20, "a retry line in the worker's log")
        worker.signal(15)
        assert worker.wait(10) == 0, worker.log()
        assert "Warm shutdown" in worker.log() and "Traceback" not in worker.log()
    finally:
        procs.close()


ONE_SHOT = [("status",), ("call", "testapp.add", "--args", "[1, 2]"), ("inspect", "ping"), ("control", "ping"),
            ("purge", "-f"), ("dlq", "list"), ("dlq", "purge", "-f"), ("result", "some-task-id")]


@pytest.mark.integration
@pytest.mark.parametrize("command", ONE_SHOT, ids=[" ".join(c[:2]) for c in ONE_SHOT])
def test_one_shot_commands_give_up_after_broker_connection_timeout_with_one_line(command):
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"  # nothing listens there
    started = time.monotonic()
    out = cli(env_for(url, {"broker_connection_timeout": 1}), "-A", "testapp", *command)
    elapsed = time.monotonic() - started
    line = only_line(out)
    assert line.startswith("Error: cannot reach Redis at redis://:***@127.0.0.1:"), line
    assert "within 1s (broker_connection_timeout)" in line and "check that Redis is running" in line
    assert PASSWORD not in out.stdout + out.stderr
    assert 1 <= elapsed < 4, elapsed  # tries for broker_connection_timeout, then stops (today: ~9 s)


@pytest.mark.integration
def test_a_wrong_password_is_one_line_at_once(tmp_path):
    server = RedisServer(tmp_path / "acl-redis", extra_args=ACL_USER).start()
    try:
        url = f"redis://worker:wrong-{PASSWORD}@127.0.0.1:{server.port}/0"
        for command in (("status",), ("worker", "-c", "1")):
            out = cli(env_for(url), "-A", "testapp", *command)
            line = error_line(out)
            assert "refused the credentials" in line and "redis://worker:***@" in line, line
            assert PASSWORD not in out.stdout + out.stderr and "Trying again" not in out.stderr
    finally:
        server.kill()


# --- errors of the commands themselves ----------------------------------------------------------------

def run(procs, *args: str, settings: dict = None) -> subprocess.CompletedProcess:
    return cli(env_for(procs.broker_url, settings), "-A", "testapp", *args)


def test_call_errors_are_one_line(procs, redis_client):
    procs.worker("-c", "1")
    out = run(procs, "call", "testapp.fail", "--wait", "10")
    task_id = out.stdout.strip()
    assert only_line(out) == f"Error: testapp.fail[{task_id}] FAILURE: ValueError: boom"
    out = run(procs, "call", "testapp.add", "--args", "[1, 2]", "--queue", "nobody", "--wait", "0.5")
    assert only_line(out) == (f"Error: no result from testapp.add[{out.stdout.strip()}] within 0.5s (state PENDING): "
                              f"is a worker consuming queue 'nobody'?")
    # --traceback (or -l debug) shows the stack instead
    out = run(procs, "--traceback", "call", "testapp.fail", "--wait", "10")
    assert out.returncode != 0 and "Traceback (most recent call last)" in out.stderr
    assert "ValueError: boom" in out.stderr
    out = run(procs, "call", "testapp.add", "--args", "[1, 2]", "--wait", "10")
    assert out.returncode == 0 and out.stdout.split()[1:] == ["3"]


def test_call_refuses_an_unregistered_task_name_with_a_suggestion(procs, redis_client):
    out = run(procs, "call", "testapp.addd", "--args", "[1, 2]")
    assert only_line(out) == ("Error: no task named 'testapp.addd' is registered in this app "
                              "(did you mean testapp.add? --force sends it anyway)")
    assert out.stdout == "" and not redis_client.keys("minique:{default}*")  # nothing was sent
    procs.worker("-c", "1")
    out = run(procs, "call", "testapp.addd", "--force")
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip()
    wait_for(lambda: redis_client.xlen("minique:dlq"), 10, "the worker to dead-letter the unknown task")
    # dlq replay takes entry ids: a task id gets one line that names its entry, and nothing is replayed
    entry_id = redis_client.xrange("minique:dlq")[0][0].decode()
    out = run(procs, "dlq", "replay", task_id)
    assert only_line(out) == (f"Error: not a dead-letter entry id: {task_id} (entry ids look like 1712345678901-0; "
                              f"{task_id} is in entry {entry_id})")
    assert out.returncode == 2 and redis_client.xlen("minique:dlq") == 1
    out = run(procs, "dlq", "replay", "1-0")
    assert only_line(out) == "Error: no dead letter with entry id 1-0 ('minique dlq list' shows them)"
    out = run(procs, "dlq", "replay", entry_id)
    assert out.returncode == 0 and "Replayed 1 message(s)." in out.stdout


def test_control_and_inspect_errors_are_one_line(procs):
    for args in (("control", "pool_grow", "abc"), ("control", "pool_shrink", "0"), ("control", "pool_grow", "1", "2")):
        out = run(procs, *args)
        line = only_line(out)
        assert out.returncode == 2 and f"usage: control {args[1]} [N]: N is a number of pool processes >= 1" in line
    out = run(procs, "inspect", "ping", "-t", "0.2")  # no worker runs
    assert out.stdout == "" and only_line(out) == "Error: No nodes replied within time constraint."
    assert out.returncode == 1


BROKEN = [
    (("-c", "-3"), {}, "worker_concurrency (-c/--concurrency) must be a number of pool processes >= 1 "
                       "(0 or unset: the CPU count), not -3"),
    ((), {"worker_concurrency": "many"}, "worker_concurrency (-c/--concurrency) must be"),
    (("--prefetch-multiplier", "-1"), {}, "worker_prefetch_multiplier (--prefetch-multiplier) must be a number of "
                                          "messages >= 0, not -1"),
    (("--time-limit", "-5"), {}, "task_time_limit (--time-limit) must be seconds > 0 (None: no limit), not -5.0"),
    (("--soft-time-limit", "0"), {}, "task_soft_time_limit (--soft-time-limit) must be seconds > 0"),
    ((), {"task_time_limit": "soon"}, "task_time_limit (--time-limit) must be seconds > 0"),
    (("--max-tasks-per-child", "0"), {}, "worker_max_tasks_per_child (--max-tasks-per-child) must be"),
    ((), {"broker_connection_timeout": 0}, "broker_connection_timeout must be seconds > 0"),
    (("-l", "verbose"), {}, "Invalid value for '-l' / '--loglevel': unknown log level 'verbose' (one of DEBUG, "
                            "INFO, WARNING, ERROR, CRITICAL, FATAL) (see 'minique worker -h')"),
]


@pytest.mark.parametrize("args, settings, said", BROKEN, ids=[b[2].split()[0] + str(i) for i, b in enumerate(BROKEN)])
def test_a_broken_worker_setting_is_one_line_with_its_celery_name(procs, args, settings, said):
    out = run(procs, "worker", *args, settings=settings)
    line = only_line(out)
    assert said in line, line


def test_debug_log_level_or_traceback_flag_show_the_stack(procs):
    for args in (("worker", "-l", "debug", "-c", "-3"), ("--traceback", "worker", "-c", "-3")):
        out = run(procs, *args)
        assert out.returncode != 0 and "Traceback (most recent call last)" in out.stderr
        assert "ConfigurationError: worker_concurrency (-c/--concurrency) must be" in out.stderr


def test_concurrency_zero_is_the_cpu_count_as_help_says(procs, client_app):
    out = run(procs, "worker", "--help")
    assert "0: the CPU count" in " ".join(out.stdout.split())
    worker = procs.worker("-c", "0")
    stats = client_app.app.control.inspect(destination=[worker.hostname], timeout=5).stats()
    assert stats[worker.hostname]["pool"]["max-concurrency"] == (os.cpu_count() or 1)


# --- the metrics endpoint -----------------------------------------------------------------------------

def _answers(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_worker_metrics_bind_loopback_unless_told_otherwise(procs):
    port = free_port()
    procs.worker("--metrics-port", str(port))
    wait_for(lambda: _answers("127.0.0.1", port), 10, "the metrics endpoint on 127.0.0.1")
    assert not _answers("127.0.0.2", port)  # another address of this host: not bound
    for how in ({"settings": json.dumps({"worker_metrics_host": "0.0.0.0"})},
                {"env": procs.env(extra={"MINIQUE_METRICS_HOST": "0.0.0.0"})}):
        port = free_port()
        procs.worker("--metrics-port", str(port), **how)
        wait_for(lambda port=port: _answers("127.0.0.2", port), 10, f"the metrics endpoint on every interface ({how})")
