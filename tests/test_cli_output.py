"""What the `minique` command prints for people (issue 19's CLI part), through real subprocesses.

The purge prompt's count; progress bars on a terminal only (a pty stands in for one) and never in
piped output; the worker's success line with its result; `minique embedded stop|status`.
"""
from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from minique.events import short_repr
from procs import pid_alive, wait_for


def run_cli(procs, *args: str, input: str = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minique.cli", "-A", "testapp", *args], env=procs.env(),
                          cwd=procs.tmp_path, capture_output=True, text=True, input=input, timeout=timeout)


def run_with_tty_stderr(procs, *args: str, timeout: float = 60) -> tuple:
    """Run the command with stderr on a pseudo-terminal (stdout piped): (exit status, stdout, what the
    terminal showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "minique.cli", "-A", "testapp", *args], env=procs.env(),
                            cwd=procs.tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = b""
    while True:  # read until the command closes its end (EIO on Linux, or an empty read)
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            raise AssertionError(f"no output nor exit within {timeout}s: {shown!r}")
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    out = proc.stdout.read().decode()
    proc.stdout.close()
    return proc.wait(timeout), out, shown.decode(errors="replace")


def _dead_letters(client_app, redis_client, n: int) -> None:
    app = client_app.app
    pipe = redis_client.pipeline(transaction=False)
    for i in range(n):
        msg = app.build_message("testapp.add", (i, 1), None, {})
        app.broker.dead_letter(pipe, msg.encode(), "parked by hand", "default", msg.id)
    pipe.execute()


def _waiting(client_app, redis_client, n: int) -> None:
    app = client_app.app
    pipe = redis_client.pipeline(transaction=False)
    for i in range(n):
        app.publish(pipe, app.build_message("testapp.add", (i, 1), None, {}))
    pipe.execute()


# --- purge: the count in the prompt, a progress bar on a terminal -------------------------------------

def test_purge_prompt_says_how_many_messages_it_deletes(procs, client_app, redis_client):
    _waiting(client_app, redis_client, 7)
    client_app.add.apply_async((1, 2), countdown=300)  # delayed: purge deletes it too, so it is counted
    out = run_cli(procs, "purge", input="n\n")
    assert out.returncode == 1 and out.stdout.startswith("Delete 8 waiting message(s) in default? [y/N]: ")
    assert "Purged" not in out.stdout
    out = run_cli(procs, "purge", input="y\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Delete 8 waiting message(s) in default? [y/N]: ")
    assert out.stdout.endswith("Purged 8 message(s) from 1 queue(s).\n")
    out = run_cli(procs, "purge", input="y\n")
    assert out.stdout.startswith("Delete 0 waiting message(s) in default?")


def test_purge_and_replay_all_show_a_progress_bar_on_a_terminal_only(procs, client_app, redis_client):
    from minique.cli import PROGRESS_FROM
    n = PROGRESS_FROM + 100
    _dead_letters(client_app, redis_client, n)
    code, out, shown = run_with_tty_stderr(procs, "dlq", "replay", "--all")
    assert code == 0 and out == f"Replayed {n} message(s).\n"
    assert "Replaying dead letters" in shown and f"  0/{n}" in shown and f"#]  {n}/{n}" in shown
    assert redis_client.xlen("minique:dlq") == 0
    code, out, shown = run_with_tty_stderr(procs, "purge", "-f", "-Q", "default,other")
    assert code == 0 and out == f"Purged {n} message(s) from 2 queue(s).\n"
    assert "Purging" in shown and f"{n}/{n}" in shown
    # piped stderr (scripts, logs): the result line only
    _dead_letters(client_app, redis_client, n)
    out = run_cli(procs, "dlq", "replay", "--all")
    assert out.returncode == 0 and out.stdout == f"Replayed {n} message(s).\n" and out.stderr == ""
    out = run_cli(procs, "purge", "-f")
    assert out.returncode == 0 and out.stdout == f"Purged {n} message(s) from 1 queue(s).\n" and out.stderr == ""


def test_few_messages_get_no_progress_bar_even_on_a_terminal(procs, client_app, redis_client):
    _dead_letters(client_app, redis_client, 3)
    code, out, shown = run_with_tty_stderr(procs, "dlq", "replay", "--all")
    assert code == 0 and out == "Replayed 3 message(s).\n" and shown == ""


# --- the worker's success line -----------------------------------------------------------------------

def test_worker_success_line_carries_a_bounded_repr_of_the_result(procs, client_app):
    worker = procs.worker("-c", "1", settings=json.dumps({"task_argsrepr_max_size": 60}))
    small = client_app.add.delay(40, 2)
    big = client_app.identity.delay("x" * 5000)
    assert small.get(timeout=10) == 42 and big.get(timeout=10) == "x" * 5000
    def success_lines():
        lines = [line for line in worker.log().splitlines() if "succeeded in" in line]
        return lines if all(any(r.id in line for line in lines) for r in (small, big)) else None

    lines = wait_for(success_lines, 10, "both success lines in the worker's log")
    [add_line] = [line for line in lines if small.id in line]
    assert re.search(rf"Task testapp\.add\[{small.id}\] succeeded in [0-9.]+s: 42$", add_line), add_line
    [big_line] = [line for line in lines if big.id in line]
    shown = big_line.split("s: ", 1)[1]
    assert shown == short_repr("x" * 5000, 60) and len(shown) <= 60 and shown.startswith("'xxx"), shown


# --- minique embedded status|stop --------------------------------------------------------------------

def run_plain(cwd, *args: str, env: dict = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minique.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=env)


def test_embedded_status_and_stop_from_the_command_line(tmp_path, redis_server):
    from minique import embedded
    directory = tmp_path / "emb"
    env = {**os.environ, "MINIQUE_REDIS_SERVER": redis_server.binary}
    out = run_plain(tmp_path, "embedded", "status", "./emb", env=env)
    assert out.returncode == 1 and out.stdout == f"No embedded redis-server runs in {directory}.\n"
    embedded.ensure_server(directory)
    try:
        pid = embedded.server_pid(directory)
        assert pid is not None
        for where in ("./emb", f"redis+embedded://{directory}"):
            out = run_plain(tmp_path, "embedded", "status", where, env=env)
            assert out.returncode == 0, out.stderr
            assert out.stdout.startswith(f"Running: pid {pid}, socket {directory / 'redis.sock'}, "
                                         f"URL redis+embedded://{directory}")
        out = run_plain(tmp_path, "embedded", "stop", "redis+embedded://./emb", env=env)
        assert out.returncode == 0 and out.stdout == f"Stopped the embedded redis-server in {directory} (pid {pid}).\n"
        assert embedded.server_pid(directory) is None and not (directory / "redis.sock").exists()
        wait_for(lambda: not pid_alive(pid), 10, "the server process to end")
        out = run_plain(tmp_path, "embedded", "status", str(directory), env=env)
        assert out.returncode == 1 and "No embedded redis-server runs in" in out.stdout
        out = run_plain(tmp_path, "embedded", "stop", str(directory), env=env)
        assert out.returncode == 0 and out.stdout == f"No embedded redis-server runs in {directory}.\n"
    finally:
        embedded.stop(directory)


@pytest.mark.integration  # starts a worker and an embedded redis-server
@pytest.mark.timeout(120)
def test_readme_own_tasks_run_on_the_embedded_url_as_written(tmp_path, redis_server):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Your own tasks", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'broker="redis+embedded://./.minique"' in code and "MINIQUE_BROKER_URL" in code
    (tmp_path / "tasks.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIQUE_BROKER", "MINIQUE_RESULT"))}
    env["MINIQUE_REDIS_SERVER"] = redis_server.binary
    worker = subprocess.Popen([sys.executable, "-m", "minique.cli", "-A", "tasks", "worker", "-c", "1"], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        out = subprocess.run([sys.executable, "-c", "from tasks import add; r = add.delay(2, 3); "
                              "print(r.get(timeout=60), r.state)"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=90)
        assert out.stdout == "5 SUCCESS\n", out.stderr
        worker.send_signal(15)
        _, err = worker.communicate(timeout=30)
        assert worker.returncode == 0 and "[tasks]\n  . tasks.add" in err, err
        out = run_plain(tmp_path, "embedded", "stop", "./.minique", env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"Stopped the embedded redis-server in {tmp_path / '.minique'} (pid ")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate(timeout=30)
        from minique import embedded
        embedded.stop(tmp_path / ".minique")


def test_events_dumps_the_stream_live_with_filters(procs, client_app):
    """`minique events`: lines as `celery events --dump`, only what the filters let through, from the
    moment it watches (the stderr line says when); `--from-start --json` replays the stream as JSON."""
    procs.worker("-c", "1")
    assert client_app.add.delay(1, 1).get(timeout=10) == 2  # before the watch: not shown live
    watcher = subprocess.Popen([sys.executable, "-m", "minique.cli", "-A", "testapp", "events", "--task",
                                "testapp.*", "--state", "succeeded", "--state", "failed", "--count", "2",
                                "--timeout", "30"], env=procs.env(), cwd=procs.tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert "watching minique:events" in watcher.stderr.readline()
        ok = client_app.add.delay(2, 3)
        assert ok.get(timeout=10) == 5
        bad = client_app.fail.delay("bad news")
        with pytest.raises(Exception, match="bad news"):
            bad.get(timeout=10)
        out, _ = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
    lines = out.splitlines()
    assert watcher.returncode == 0 and len(lines) == 2, out
    assert re.match(rf"\d{{4}}-\d\d-\d\d [\d:.]+ w1@test task-succeeded testapp.add\[{ok.id}\] .*runtime=", lines[0])
    assert f"task-failed testapp.fail[{bad.id}]" in lines[1] and "bad news" in lines[1]
    replay = run_cli(procs, "events", "--from-start", "--json", "--count", "3", "--state", "started")
    assert replay.returncode == 0, replay.stderr
    started = [json.loads(line) for line in replay.stdout.splitlines()]
    assert [e["type"] for e in started] == ["task-started"] * 3
    assert {e["name"] for e in started} == {"testapp.add", "testapp.fail"}
    quiet = run_cli(procs, "events", "--timeout", "0.3")  # nothing new: ends on its own, prints nothing
    assert quiet.returncode == 0 and quiet.stdout == ""
