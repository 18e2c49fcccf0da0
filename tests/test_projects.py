"""Celery applications in Celery's documented layouts (tests/projects/), imports changed to minique and
nothing else, run by `minique -A proj worker` / `beat` started in the project's directory.

- nextsteps: proj/celery.py + proj/tasks.py; tasks, a chain, a group, a chord; periodic tasks added from
  on_after_configure (with arguments; a crontab) and from on_after_finalize fire under beat.
- djangoproj: a Django project (settings with CELERY_ names, sqlite in a temporary directory, two Django
  apps whose tasks.py use shared_task, found by app.autodiscover_tasks()); a task using the ORM; tasks
  are DjangoTasks, and delay_on_commit / apply_async_on_commit send only once the transaction commits.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from minique import chain, chord, group
from procs import Proc

PROJECTS = Path(__file__).parent / "projects"
NEXTSTEPS = PROJECTS / "nextsteps"
DJANGO = PROJECTS / "djangoproj"


@pytest.fixture
def nextsteps(monkeypatch, redis_url):
    """proj.tasks of the next-steps project imported here (the client side), pointed at the test Redis."""
    monkeypatch.setenv("MINIQUE_BROKER_URL", redis_url)
    monkeypatch.setenv("MINIQUE_RESULT_BACKEND", redis_url)
    monkeypatch.syspath_prepend(str(NEXTSTEPS))
    _forget_proj()
    import proj.tasks
    yield proj.tasks
    proj.tasks.app.close()
    _forget_proj()


def _forget_proj() -> None:
    for name in [n for n in sys.modules if n == "proj" or n.startswith("proj.")]:
        del sys.modules[name]


def _nextsteps_env(procs, redis_url):
    return procs.env(extra={"MINIQUE_RESULT_BACKEND": redis_url})


def test_nextsteps_worker_runs_tasks_and_canvases(procs, redis_url, nextsteps):
    procs.worker("-c", "2", app="proj", cwd=NEXTSTEPS, env=_nextsteps_env(procs, redis_url))
    tasks = nextsteps
    assert tasks.add.delay(2, 3).get(timeout=10) == 5
    assert chain(tasks.add.s(2, 2), tasks.mul.s(8)).delay().get(timeout=10) == 32
    assert group(tasks.add.s(i, i) for i in range(5)).delay().get(timeout=10) == [0, 2, 4, 6, 8]
    assert chord((tasks.add.s(i, i) for i in range(5)), tasks.xsum.s()).delay().get(timeout=10) == 20
    assert tasks.app.conf.result_expires == 3600  # app.conf.update(...) at import, kept


def test_nextsteps_periodic_tasks_from_app_signals_fire_under_beat(procs, redis_url, redis_client):
    env = _nextsteps_env(procs, redis_url)
    listed = subprocess.run([sys.executable, "-m", "minique.cli", "-A", "proj", "beat", "--list"], cwd=NEXTSTEPS,
                            env=env, capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split("  ")[0]: line for line in listed.stdout.splitlines()}
    assert set(lines) == {"tick every 0.5s", "monday morning", "tick after finalize"}
    assert "crontab: 30 7 * * 1" in lines["monday morning"] and "proj.tasks.tick" in lines["monday morning"]

    procs.worker("-c", "1", app="proj", cwd=NEXTSTEPS, env=env)
    procs.beat(app="proj", cwd=NEXTSTEPS, env=env)
    # the entries' arguments arrive: (key, label) from tick.s(...) in the signal receivers
    assert redis_client.blpop(["proj:ticks"], timeout=20) == (b"proj:ticks", b"configured")
    assert redis_client.blpop(["proj:ticks:finalized"], timeout=20) == (b"proj:ticks:finalized", b"finalized")


# --- Django ---------------------------------------------------------------------------------------

def _django_env(procs, redis_url, db_path):
    env = procs.env(extra={"PROJ_REDIS_URL": redis_url, "PROJ_DB_PATH": str(db_path)})
    env.pop("MINIQUE_BROKER_URL", None)  # the broker comes from the settings' CELERY_BROKER_URL
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def _manage(env, *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=DJANGO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _shell(env, code: str):
    """Run `code` in `manage.py shell`; it prints one line `RESULT <json>`, returned decoded."""
    out = _manage(env, "shell", "-v", "0", "-c", code)
    found = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert found, out
    return json.loads(found[-1][len("RESULT "):])


@pytest.fixture
def django_env(procs, redis_url, tmp_path):
    pytest.importorskip("django")
    env = _django_env(procs, redis_url, tmp_path / "db.sqlite3")
    _manage(env, "migrate", "--run-syncdb", "-v", "0")
    return env


def test_django_project_worker_runs_autodiscovered_shared_tasks_with_the_orm(procs, django_env, redis_url):
    procs.worker("-c", "2", app="proj", cwd=DJANGO, env=django_env)
    got = _shell(django_env, """
import json
from orders.models import Order
from orders.tasks import mark_paid, count_paid
from notes.tasks import shout, whoami
from minique import current_app
from proj import celery_app
order = Order.objects.create(item="book")
Order.objects.create(item="pen")
conf = celery_app.conf
print("RESULT " + json.dumps({
    "paid": mark_paid.delay(order.id).get(timeout=10),
    "count": count_paid.delay().get(timeout=10),
    "paid_in_db": Order.objects.get(pk=order.id).paid,
    "shout": shout.delay("hi").get(timeout=10),
    "whoami": whoami.delay().get(timeout=10),
    "current": current_app.main,
    "settings": [conf.broker_url, conf.result_expires, conf.task_acks_late, conf.task_default_queue],
}))
""")
    assert got["paid"] == "book" and got["count"] == 1 and got["paid_in_db"] is True
    assert got["shout"] == "HI"
    assert got["whoami"]["task"] == "notes.tasks.whoami" and got["whoami"]["class"] == "DjangoTask"
    assert got["whoami"]["worker"].startswith("w")  # it ran in the worker the test started
    assert got["current"] == "proj"
    # CELERY_-prefixed settings read; TASK_DEFAULT_QUEUE (no prefix) is not
    assert got["settings"] == [redis_url, 600, True, "default"]
    # the command line knows the autodiscovered tasks too (minique call checks the name is registered)
    called = subprocess.run([sys.executable, "-m", "minique.cli", "-A", "proj", "call", "notes.shout", "-a", '["x"]',
                             "--wait", "10"], cwd=DJANGO, env=django_env, capture_output=True, text=True, timeout=60)
    assert called.returncode == 0, called.stderr
    assert called.stdout.splitlines()[-1] == '"X"'


def test_django_delay_on_commit_sends_only_after_commit(django_env):
    got = _shell(django_env, """
import json
from django.db import transaction
from orders.models import Order
from orders.tasks import mark_paid
from proj import celery_app

def waiting():
    return celery_app.broker.length("default", 0)

with transaction.atomic():
    order = Order.objects.create(item="lamp")
    mark_paid.delay_on_commit(order.id)
    mark_paid.apply_async_on_commit((order.id,), countdown=0)
    inside = waiting()
after_commit = waiting()

class Rollback(Exception):
    pass

try:
    with transaction.atomic():
        order = Order.objects.create(item="chair")
        mark_paid.delay_on_commit(order.id)
        raise Rollback()
except Rollback:
    pass
after_rollback = waiting()
print("RESULT " + json.dumps([inside, after_commit, after_rollback]))
""")
    assert got == [0, 2, 2]


def test_nextsteps_app_start_runs_the_command_with_that_app(procs, redis_url, nextsteps):
    """`python -m proj.celery worker` (proj/celery.py ends with `app.start()`): proj.tasks, imported by
    `include`, registers in the app being run, not in a second copy of proj/celery.py."""
    proc = Proc.__new__(Proc)
    proc.args, proc.log_path = ["worker"], procs.tmp_path / "start.log"
    proc._log = open(proc.log_path, "wb")
    proc.hostname = "started@test"
    proc.popen = subprocess.Popen([sys.executable, "-m", "proj.celery", "worker", "-n", proc.hostname, "-c", "1"],
                                  cwd=NEXTSTEPS, env=_nextsteps_env(procs, redis_url), stdout=proc._log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    procs.procs.append(proc)
    procs.wait_ready(proc)
    assert nextsteps.mul.delay(6, 7).get(timeout=10) == 42


FORKAPP = '''
import os
import redis
from minique import Minique

app = Minique("forkapp")


def _record(event):
    client = redis.Redis.from_url(app.conf.broker_url)
    client.rpush("forkapp:events", f"{event}:{os.getpid()}")
    client.close()


@app.on_configure.connect
def configuring(sender, **kwargs):
    assert sender is app
    os.environ["FORKAPP_SEEN"] = "configure"  # (no Redis URL to record with before the configuration)


@app.on_after_configure.connect
def configured(sender, source, **kwargs):
    _record("after_configure" if os.environ.get("FORKAPP_SEEN") == "configure" else "after_configure-alone")


@app.on_after_finalize.connect
def finalized(sender, **kwargs):
    _record("after_finalize")


@app.on_after_fork.connect
def forked(sender, **kwargs):
    _record("after_fork")
'''


def test_app_signals_in_a_worker(procs, redis_client, tmp_path):
    (tmp_path / "forkapp.py").write_text(FORKAPP)
    proc = procs.worker("-c", "2", app="forkapp", cwd=tmp_path)
    events = [redis_client.blpop(["forkapp:events"], timeout=20)[1].decode() for _ in range(4)]
    kinds = [event.split(":")[0] for event in events]
    pids = [int(event.split(":")[1]) for event in events]
    assert kinds == ["after_configure", "after_finalize", "after_fork", "after_fork"]
    assert pids[0] == pids[1] == proc.pid  # the parent configures and finalizes, once
    assert set(pids[2:]) == set(proc.children()) and len(set(pids[2:])) == 2  # each pool process after its fork


def test_django_worker_fixup_closes_connections_around_tasks(django_env):
    """What the fix-up does in a worker, driven by the signals a worker sends (worker_init,
    worker_process_init, task_prerun, task_postrun): connections are closed around each task."""
    got = _shell(django_env, """
import json
from django.db import connection
from minique import signals
from orders.models import Order
from orders.tasks import count_paid
from proj import celery_app

fixup = celery_app._fixups[0]
before = fixup.worker_fixup
signals.worker_init.send(sender=None)
Order.objects.count()
opened = connection.connection is not None
signals.task_postrun.send(sender=count_paid, task_id="t", task=count_paid, args=(), kwargs={}, retval=0,
                          state="SUCCESS")
after_task = connection.connection is None
Order.objects.count()
signals.worker_process_init.send(sender=None)
after_fork = connection.connection is None
print("RESULT " + json.dumps([before is None, type(fixup.worker_fixup).__name__, opened, after_task, after_fork]))
""")
    assert got == [True, "DjangoWorkerFixup", True, True, True]
