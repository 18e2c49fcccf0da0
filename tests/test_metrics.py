"""Prometheus metrics scraped over HTTP from real workers (and the dashboard's cluster-wide gauges)."""
import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from minique.exceptions import WorkerLostError
from procs import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    """{(sample name, frozenset(labels)): value} from http://127.0.0.1:port/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def metrics_worker(procs, *args):
    port = free_port()
    worker = procs.worker("--metrics-port", str(port), *args)
    wait_for(lambda: _up(port), 10, "the metrics endpoint")
    return worker, port


def _up(port: int) -> bool:
    try:
        return bool(scrape(port))
    except OSError:
        return False


def test_counters_and_histograms_add_up_to_the_work_sent(procs, client_app, redis_client):
    _, port = metrics_worker(procs, "-c", "2")
    adds = [client_app.add.delay(i, i) for i in range(6)]
    fails = [client_app.fail.delay("x") for _ in range(2)]
    sleeps = [client_app.sleep_record.delay("s", f"t{i}", 0.2) for i in range(2)]
    retried = client_app.retry_no_exc.delay("retry-key")  # retries once, then fails (max_retries=1)
    assert [r.get(timeout=10) for r in adds] == [2 * i for i in range(6)]
    for r in fails + [retried]:
        r.get(timeout=10, propagate=False)
    [r.get(timeout=10) for r in sleeps]
    redis_client.xadd("minique:{default}:p0", {"m": b"\x00garbage"})  # dead-lettered by the worker
    wait_for(lambda: redis_client.xlen("minique:dlq"), 10, "the dead letter")

    m = scrape(port)
    q = "default"
    add, fail, slp, rty = "testapp.add", "testapp.fail", "testapp.sleep_record", "testapp.retry_no_exc"
    for state in ("received", "started", "succeeded"):
        assert value(m, "minique_tasks_total", task=add, state=state, queue=q) == 6
    assert value(m, "minique_tasks_total", task=add, state="failed", queue=q) == 0
    assert value(m, "minique_tasks_total", task=fail, state="failed", queue=q) == 2
    assert value(m, "minique_tasks_total", task=rty, state="retried", queue=q) == 1
    assert value(m, "minique_tasks_total", task=rty, state="failed", queue=q) == 1
    assert value(m, "minique_tasks_total", task=rty, state="started", queue=q) == 2
    # run time: one observation per run that ended; the 0.2 s sleeps land above 0.1 s
    assert value(m, "minique_task_runtime_seconds_count", task=add, queue=q) == 6
    assert value(m, "minique_task_runtime_seconds_count", task=fail, queue=q) == 2
    assert value(m, "minique_task_runtime_seconds_count", task=rty, queue=q) == 2
    assert value(m, "minique_task_runtime_seconds_count", task=slp, queue=q) == 2
    assert 0.4 <= value(m, "minique_task_runtime_seconds_sum", task=slp, queue=q) < 2
    assert value(m, "minique_task_runtime_seconds_bucket", task=slp, queue=q, le="0.1") == 0
    assert value(m, "minique_task_runtime_seconds_bucket", task=slp, queue=q, le="+Inf") == 2
    # queue wait: one observation per start, from the message's sent_at
    assert value(m, "minique_task_queue_wait_seconds_count", task=add, queue=q) == 6
    assert value(m, "minique_task_queue_wait_seconds_count", task=rty, queue=q) == 2
    assert 0 <= value(m, "minique_task_queue_wait_seconds_sum", task=add, queue=q) < 10
    assert value(m, "minique_dead_letters_total", queue=q, reason="undecodable") == 1
    # the worker itself
    assert value(m, "minique_worker_up") == 1
    assert value(m, "minique_worker_pool_size") == 2
    assert value(m, "minique_worker_pool_processes") == 2
    assert value(m, "minique_tasks_running") == 0
    assert value(m, "minique_tasks_prefetched") == 0
    assert value(m, "minique_worker_child_restarts_total") == 0
    assert any(k[0] == "minique_worker_info" and ("worker", "w1@test") in k[1] for k in m)


@pytest.mark.fault  # kills a pool child
def test_counts_of_a_dead_child_are_kept_and_the_loss_is_counted(procs, client_app):
    _, port = metrics_worker(procs, "-c", "1", "--max-tasks-per-child", "3")
    for i in range(4):  # the child recycles after 3: counts span two children
        assert client_app.add.delay(i, 1).get(timeout=10) == i + 1
    r = client_app.die.delay()  # kill -9 mid-task: the parent counts the failure
    with pytest.raises(WorkerLostError):
        r.get(timeout=15)
    assert client_app.add.delay(1, 1).get(timeout=10) == 2
    m = scrape(port)
    assert value(m, "minique_tasks_total", task="testapp.add", state="succeeded", queue="default") == 5
    assert value(m, "minique_tasks_total", task="testapp.die", state="started", queue="default") == 1
    assert value(m, "minique_tasks_total", task="testapp.die", state="failed", queue="default") == 1
    assert value(m, "minique_worker_child_restarts_total") == 1


def test_thread_pool_counts_and_running_gauge(procs, client_app, redis_client):
    _, port = metrics_worker(procs, "-P", "threads", "-c", "2")
    r = client_app.hold.delay("gm")
    wait_for(lambda: redis_client.llen("gm:started"), 10, "the task to start")
    assert value(scrape(port), "minique_tasks_running") == 1
    redis_client.rpush("gm:gate", 1)
    assert r.get(timeout=10) == "gm"
    m = scrape(port)
    assert value(m, "minique_tasks_running") == 0
    assert value(m, "minique_tasks_total", task="testapp.hold", state="succeeded", queue="default") == 1


def test_without_events_metrics_still_count(procs, client_app, redis_client):
    _, port = metrics_worker(procs, "-c", "1", "--without-events")
    assert client_app.add.delay(1, 2).get(timeout=10) == 3
    assert value(scrape(port), "minique_tasks_total", task="testapp.add", state="succeeded", queue="default") == 1
    assert redis_client.xlen("minique:events") == 0


def test_dashboard_exports_cluster_wide_queue_gauges(procs, client_app, redis_client):
    from test_dashboard import start_dashboard
    app = client_app.app
    for p in (0, 0, 5):
        client_app.add.apply_async((1, 1), priority=p)
    client_app.add.apply_async((1, 1), queue="other")
    client_app.add.apply_async((1, 1), countdown=300)
    redis_client.xadd("minique:dlq", {"m": b"x", "reason": "test", "queue": "default", "task_id": "",
                                      "worker": "w", "time": "0"})
    redis_client.hset("minique:beat:last", mapping={"nightly": "1700000000.5", "broken": "x"})
    redis_client.hset("minique:beat:lag", "nightly", "0.25")
    dash = start_dashboard(procs)
    m = dash.metrics()
    assert value(m, "minique_queue_length", queue="default", priority="0") == 2
    assert value(m, "minique_queue_length", queue="default", priority="5") == 1
    assert value(m, "minique_queue_length", queue="other", priority="0") == 1
    assert value(m, "minique_queue_delayed", queue="default") == 1
    assert value(m, "minique_queue_unacked", queue="default") == 0
    assert value(m, "minique_dead_letter_queue_length") == 1
    assert value(m, "minique_workers_alive") == 0
    assert value(m, "minique_beat_last_run_timestamp_seconds", entry="nightly") == 1700000000.5
    assert value(m, "minique_beat_lag_seconds", entry="nightly") == 0.25
    assert ("minique_beat_last_run_timestamp_seconds", frozenset({"entry": "broken"}.items())) not in m
    # priority series only for priorities in use (and 0, so sums over a queue always have a series)
    assert ("minique_queue_length", frozenset({"queue": "default", "priority": "3"}.items())) not in m
    assert ("minique_queue_length", frozenset({"queue": "other", "priority": "5"}.items())) not in m
    # the oldest waiting message's age: from its stream entry id, so it was waiting before the scrape began
    assert 0 < value(m, "minique_queue_oldest_message_age_seconds", queue="default") < 60
    if redis_client.info("server")["redis_version"] >= "7":  # entries-added came with Redis 7.0
        assert value(m, "minique_tasks_sent_total", queue="default") == 3  # (the countdown one is not due)
    # once a worker takes the messages, the gauges follow
    procs.worker("-c", "1")
    wait_for(lambda: value(dash.metrics(), "minique_queue_length", queue="default", priority="0") == 0, 10,
             "the default queue to drain")
    m = dash.metrics()
    assert value(m, "minique_workers_alive") == 1
    assert value(m, "minique_queue_oldest_message_age_seconds", queue="default") == 0
    assert app.broker.delayed_count("default") == 1


def _exported_names(text: str) -> set:
    """Every sample name the families of an exposition can have (a family with no sample yet counts)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
                "info": ("_info",), "summary": ("_sum", "_count", "")}
    return {family.name + suffix for family in text_string_to_metric_families(text)
            for suffix in suffixes.get(family.type, ("",))}


def test_the_grafana_board_queries_only_metrics_that_exist(procs):
    """docs/grafana/minique.json: every metric a panel names is exported by a worker or the dashboard."""
    import json
    import re
    from pathlib import Path

    from test_dashboard import start_dashboard
    board = json.loads((Path(__file__).resolve().parents[1] / "docs/grafana/minique.json").read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    named = {m for expr in exprs for m in re.findall(r"\b(?:minique|process)_[a-z_]+", expr)}
    assert len(named) >= 15 and len(exprs) >= 15
    _, port = metrics_worker(procs, "-c", "1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        exported = _exported_names(resp.read().decode())
    dash = start_dashboard(procs)
    status, _, data = dash.request("GET", "/metrics")
    assert status == 200
    exported |= _exported_names(data.decode())
    assert named - exported == set(), f"panels query metrics nobody exports: {sorted(named - exported)}"


def _probe(port: int, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return None, ""


def test_health_probes_follow_redis_and_shutdown(fresh_redis, tmp_path):
    """--health-port: /livez while the parent's loop turns; /readyz also needs Redis and a live pool."""
    from procs import Processes
    procs = Processes(tmp_path, fresh_redis.url())
    try:
        port = free_port()
        worker = procs.worker("-c", "1", "--health-port", str(port))
        wait_for(lambda: _probe(port, "/readyz")[0] == 200, 10, "/readyz to answer 200")
        assert _probe(port, "/livez") == (200, "ok\n")
        assert _probe(port, "/metrics")[0] == 404  # a health-only port serves no metrics
        fresh_redis.kill()
        wait_for(lambda: _probe(port, "/readyz")[0] == 503, 20, "/readyz to fail without Redis")
        assert "Redis does not answer" in _probe(port, "/readyz")[1]
        assert _probe(port, "/livez")[0] == 200  # the process is alive: restarting it would not help
        fresh_redis.start()
        wait_for(lambda: _probe(port, "/readyz")[0] == 200, 15, "/readyz to recover with Redis")
        worker.signal(__import__("signal").SIGTERM)
        worker.wait(15)
        assert _probe(port, "/livez")[0] is None  # gone with the worker
    finally:
        procs.close()


@pytest.mark.parametrize("stalled, stopping, members, probe, expected", [
    (0, None, 1, "livez", (True, "ok")),
    (0, None, 1, "readyz", (True, "ok")),
    (31, None, 1, "livez", (False, "the worker's loop has not turned for 31s")),
    (0, "warm", 1, "livez", (True, "ok")),
    (0, "warm", 1, "readyz", (False, "shutting down (warm)")),
    (0, None, 0, "readyz", (False, "no pool process is alive")),
])
def test_health_rules(stalled, stopping, members, probe, expected):
    """Telemetry.health's rules, without a worker: a stalled loop fails both probes; readiness also needs
    a running, un-stopping pool whose loop reached Redis."""
    from types import SimpleNamespace

    from minique.worker.observe import Telemetry
    worker = SimpleNamespace(loop_at=time.monotonic() - stalled, stopping=stopping,
                             pool=SimpleNamespace(members={i: None for i in range(members)}),
                             _unreachable_since=None)
    health = Telemetry.health(SimpleNamespace(worker=worker), probe)
    assert health[0] == expected[0] and health[1].startswith(expected[1][:30])


def test_redeliveries_and_throttled_tasks_are_counted(procs, client_app, redis_client):
    """minique_task_redeliveries_total: a message delivered again (here: rejected with requeue once);
    minique_tasks_throttled_total: tasks parked for their rate limit's reserved start. (acks_late: a
    requeue puts the held message back, one more delivery; with an early ack it is sent anew.)"""
    import json
    port = free_port()
    procs.worker("--metrics-port", str(port), "-c", "1", settings=json.dumps({"task_acks_late": True}))
    wait_for(lambda: _up(port), 10, "the metrics endpoint")
    again = client_app.reject_requeue_once.delay("m:rq")
    assert again.get(timeout=10) is not None
    client_app.app.control.rate_limit("testapp.add", "4/s", reply=True, timeout=2)
    assert [r.get(timeout=10) for r in [client_app.add.delay(i, i) for i in range(3)]] == [0, 2, 4]
    m = scrape(port)
    assert value(m, "minique_task_redeliveries_total", task="testapp.reject_requeue_once", queue="default") == 1
    assert value(m, "minique_task_redeliveries_total", task="testapp.add", queue="default") == 0
    assert value(m, "minique_tasks_throttled_total", task="testapp.add", queue="default") == 2
