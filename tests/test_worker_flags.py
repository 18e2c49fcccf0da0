"""Celery's worker flags on `minique worker`, through the real CLI: -O fair, the --without-* no-ops,
--statedb, --pidfile, --detach and a real --autoscale (grows with a backlog, shrinks back when idle, loses
nothing)."""
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from procs import APPS, wait_for


def cli(procs, *args, cwd=None, settings=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "minique.cli", "-A", "testapp", *args],
                          env=procs.env(settings), cwd=cwd or procs.tmp_path, capture_output=True, text=True,
                          timeout=timeout)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a daemon's exit may wait for a reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def stats_of(app, hostname):
    return (app.control.inspect([hostname], timeout=2.0).stats() or {}).get(hostname)


def test_celery_flags_are_accepted(procs, client_app):
    w = procs.worker("-c", "1", "-O", "fair", "--without-gossip", "--without-mingle", "--without-heartbeat",
                     "-S", "worker.db", "--events", "--heartbeat-interval", "1", "--prefetch-multiplier", "8",
                     "-X", "other", "-B", "-s", "celerybeat-schedule", "--umask", "027")
    assert client_app.add.delay(2, 3).get(timeout=10) == 5
    log = w.log()
    assert "revokes already live in Redis" in log and "worker.db" in log       # --statedb: said, not used
    assert "--prefetch-multiplier 8 is not used" in log                        # -O fair takes one at a time
    assert "prefetch 1 per process (-O fair)" in log
    assert "-s/--schedule-filename (celerybeat-schedule) is not used" in log
    assert "Umask:\t0027" in Path(f"/proc/{w.pid}/status").read_text()
    stats = stats_of(client_app.app, w.hostname)
    assert stats["prefetch_count"] == 1
    w2 = procs.worker("-c", "1", "-O", "default", "--disable-prefetch")  # Celery's other name for fair
    assert "(-O fair)" in w2.log()


def test_bad_worker_flags_are_refused_with_one_line(procs):
    for args, said in ((("-O", "bogus"), "'bogus' is not one of 'default', 'fair'"),
                       (("--autoscale", "many"), "--autoscale takes MAX,MIN or MAX"),
                       (("--autoscale", "0"), "MAX must be >= 1"),
                       (("--autoscale", "2,1", "-P", "solo"), "--autoscale needs a pool of several processes"),
                       (("--umask", "u=rwx"), "--umask must be a number"),
                       (("--pidfile", "%z.pid"), "unknown format %z"),
                       (("-Q", "a", "-X", "a"), "leaves no queue to consume"),
                       (("-I", "no_such_module"), "No module named 'no_such_module'")):
        out = cli(procs, "worker", *args)
        assert out.returncode != 0, args
        errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and said in errors[0], (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_purge_deletes_the_waiting_messages_first(procs, client_app, redis_client):
    key = f"purged-{uuid.uuid4().hex[:6]}"
    for i in range(3):
        client_app.record.delay(key, str(i))
    w = procs.worker("-c", "1", "--purge")
    assert "--purge: deleted 3 waiting message(s) from default" in w.log()
    assert client_app.record.delay(key, "after").get(timeout=10) == "after"
    assert redis_client.lrange(key, 0, -1) == [b"after"]


def test_help_says_what_the_celery_flags_do(procs):
    out = cli(procs, "worker", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for flag in ("--without-gossip", "--without-mingle", "--without-heartbeat"):
        assert flag in text
    assert text.count("minique has nothing to turn off here") == 3
    assert "fair: each pool process takes a message only when it is free" in text
    assert "revokes already live in Redis" in text
    assert "--autoscale MAX,MIN" in text and "--detach" in text and "--pidfile" in text


def test_pidfile_is_written_refuses_a_second_worker_and_is_removed(procs, client_app, tmp_path):
    first = procs.worker("-c", "1", "--pidfile", "%n.pid", cwd=tmp_path)   # -n w1@test: %n is w1
    pidfile = tmp_path / "w1.pid"
    assert pidfile.read_text() == f"{first.pid}\n"
    out = cli(procs, "worker", "-n", "other@test", "--pidfile", str(pidfile))
    assert out.returncode == 1, out.stderr
    assert f"names a live process (pid {first.pid})" in out.stderr
    assert pidfile.read_text() == f"{first.pid}\n"                          # the first worker's, untouched
    assert client_app.add.delay(1, 1).get(timeout=10) == 2                   # and it goes on
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=20) == 0
    assert not pidfile.exists()
    # a stale pid file (its process is gone) does not stop the next start
    pidfile.write_text(f"{first.pid}\n")
    again = procs.worker("-c", "1", "--pidfile", str(pidfile))
    assert pidfile.read_text() == f"{again.pid}\n"


def test_detach_returns_at_once_and_the_daemon_runs_tasks(procs, client_app, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    hostname = f"wd{uuid.uuid4().hex[:6]}@test"
    name = hostname.partition("@")[0]
    pid = None
    try:
        out = subprocess.run([sys.executable, "-m", "minique.cli", "-A", "testapp", "worker", "--detach", "-n",
                              hostname, "-c", "1", "-l", "info", "--workdir", str(workdir), "--umask", "027"],
                             env=procs.env(), cwd=APPS, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        pidfile, logfile = workdir / f"{name}.pid", workdir / f"{name}.log"   # celery multi's defaults
        pid = int(pidfile.read_text())               # written before the command returned
        assert alive(pid)
        assert os.getsid(pid) != os.getsid(0)        # its own session, away from ours
        assert Path(f"/proc/{pid}/cwd").resolve() == workdir.resolve()
        status = Path(f"/proc/{pid}/status").read_text()
        assert "Umask:\t0027" in status
        assert client_app.add.delay(20, 22).get(timeout=20) == 42
        assert stats_of(client_app.app, hostname)["pid"] == pid
        wait_for(lambda: "ready" in logfile.read_text(), 10, "the banner in the log file")
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not alive(pid), 20, "the detached worker to stop")
        assert not pidfile.exists()
        assert "Warm shutdown" in logfile.read_text()
    finally:
        if pid is not None and alive(pid):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


def test_detach_refuses_a_live_pidfile_on_the_terminal(procs, tmp_path):
    pidfile = tmp_path / "busy.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # this test process: alive
    out = cli(procs, "worker", "--detach", "--pidfile", str(pidfile), "-f", str(tmp_path / "w.log"))
    assert out.returncode == 1
    assert f"names a live process (pid {os.getpid()})" in out.stderr
    assert pidfile.read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_autoscale_grows_with_a_backlog_and_shrinks_when_idle(procs, client_app, redis_client, pool):
    w = procs.worker("--autoscale", "4,1", "-O", "fair", "-P", pool,
                     settings=json.dumps({"worker_autoscale_keepalive": 0.5}))
    app = client_app.app
    wait_for(lambda: len(stats_of(app, w.hostname)["pool"]["processes"]) == 1, 10, "the pool to start at MIN")
    key = f"hold-{uuid.uuid4().hex[:6]}"
    results = [client_app.hold.delay(key) for _ in range(6)]
    # each process (or thread) takes one message (fair); the backlog grows the pool to MAX: four run at once
    wait_for(lambda: redis_client.llen(f"{key}:started") == 4, 20, "four tasks running at once")
    if pool == "prefork":
        assert len(set(redis_client.lrange(f"{key}:started", 0, -1))) == 4  # in four processes
    stats = stats_of(app, w.hostname)
    assert stats["autoscaler"]["max"] == 4 and stats["autoscaler"]["current"] == 4
    assert len(stats["pool"]["processes"]) == 4
    answer = app.control.pool_grow(1, destination=[w.hostname], reply=True, timeout=5)
    assert "not supported with autoscale" in answer[0][w.hostname]["error"]
    redis_client.rpush(f"{key}:gate", *["go"] * 6)
    assert [r.get(timeout=20) for r in results] == [key] * 6                # none lost
    assert redis_client.llen(f"{key}:started") == 6                          # each ran once
    # idle for the keepalive (0.5 s): back to one process
    wait_for(lambda: len(stats_of(app, w.hostname)["pool"]["processes"]) == 1, 20, "the pool to shrink to MIN",
             interval=0.2)
    assert client_app.add.delay(1, 2).get(timeout=10) == 3
    out = cli(procs, "control", "autoscale", "2", "1", "-d", w.hostname, "-t", "5")
    assert out.returncode == 0 and f"-> {w.hostname}: OK" in out.stdout, out.stderr
    assert "autoscale now max=2 min=1" in out.stdout
    assert stats_of(app, w.hostname)["autoscaler"]["max"] == 2
    out = cli(procs, "control", "autoscale", "many")
    assert out.returncode == 2 and "usage: control autoscale MAX [MIN]" in out.stderr


def test_shrinking_busy_processes_returns_what_they_fetched(procs, client_app, redis_client):
    """Default prefetch (each process reserves up to 4): lowering MAX retires busy processes that hold fetched
    messages; each finishes its task and the worker gives back the rest. Every task runs, exactly once."""
    w = procs.worker("--autoscale", "3,1", settings=json.dumps({"worker_autoscale_keepalive": 0.3}))
    key = f"hold-{uuid.uuid4().hex[:6]}"
    results = [client_app.hold.delay(key) for _ in range(12)]
    wait_for(lambda: len(set(redis_client.lrange(f"{key}:started", 0, -1))) == 3, 20, "three busy processes")
    answer = client_app.app.control.autoscale(1, 1, destination=[w.hostname], reply=True, timeout=5)
    assert answer[0][w.hostname] == {"ok": "autoscale now max=1 min=1"}
    wait_for(lambda: "2 process(es) stop after their task" in w.log(), 10, "two processes retired")
    redis_client.rpush(f"{key}:gate", *["go"] * 12)
    assert [r.get(timeout=30) for r in results] == [key] * 12
    assert redis_client.llen(f"{key}:started") == 12                          # each ran once
    assert "unstarted message(s) returned" in w.log()                         # what they held went back
    assert len(stats_of(client_app.app, w.hostname)["pool"]["processes"]) == 1


@pytest.mark.parametrize("optimization", ["fair", "default"])
def test_fair_lets_no_message_wait_behind_a_long_task(procs, client_app, redis_client, optimization):
    """A backlog met by two processes: one long task first, then seven short ones. -O fair: the short ones all
    run on the other process while the long one runs. default: the process that took the long task reserved
    three short ones with it (prefetch 4), and they wait behind it."""
    key, done = f"hold-{uuid.uuid4().hex[:6]}", f"done-{uuid.uuid4().hex[:6]}"
    long_task = client_app.hold.delay(key)
    short = [client_app.record.delay(done, str(i)) for i in range(7)]
    w = procs.worker("-c", "2", "-O", optimization)
    wait_for(lambda: redis_client.llen(f"{key}:started") == 1, 10, "the long task to start")
    if optimization == "fair":
        assert sorted(r.get(timeout=10) for r in short) == [str(i) for i in range(7)]
    else:
        reserved = lambda: (client_app.app.control.inspect([w.hostname], timeout=2.0).reserved() or {}).get(  # noqa: E731
            w.hostname, [])
        wait_for(lambda: redis_client.llen(done) == 4 and len(reserved()) == 3, 10, "three messages behind it")
    redis_client.rpush(f"{key}:gate", "go")
    assert long_task.get(timeout=10) == key
    assert sorted(r.get(timeout=10) for r in short) == [str(i) for i in range(7)]
