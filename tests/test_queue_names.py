"""Queue names with `{` or `}` are refused where they are given and where keys are built: a brace
would change the hash tag of the queue's keys, so its scripts and dead letters would name another
queue (issue 16)."""
import subprocess
import sys

import pytest

from minique import Minique, keys
from minique.exceptions import ConfigurationError, InvalidQueueName

BAD = ["a{b", "a}b", "{x}", "q}:p0:{other", ""]


@pytest.fixture
def app(monkeypatch):
    monkeypatch.delenv("MINIQUE_BROKER_URL", raising=False)
    app = Minique("t")

    @app.task(name="t.plain")
    def plain():
        pass
    app.plain = plain
    return app


@pytest.mark.parametrize("name", BAD)
def test_the_key_builders_refuse_a_name_that_would_change_the_hash_tag(name):
    for build in (keys.queue, keys.delayed, lambda q: keys.processing(q, "c"), keys.consumers,
                  keys.queue_priorities):
        with pytest.raises(InvalidQueueName):
            build(name)


def test_a_brace_would_name_another_queue_which_is_why_it_is_refused():
    # what the dead-letter path reads back from a key is its hash tag: with a brace it is not the queue
    assert keys.queue_name_of("minique:{a}b}:p0") == "a"
    assert keys.queue_name_of(keys.queue("a.b-c:d", 3)) == "a.b-c:d"   # anything else goes


def test_the_error_is_both_a_configuration_error_and_a_value_error_and_says_why():
    with pytest.raises(InvalidQueueName) as info:
        keys.check_queue("a}b", "task_routes")
    assert isinstance(info.value, ConfigurationError) and isinstance(info.value, ValueError)
    assert "'a}b'" in str(info.value) and "task_routes" in str(info.value) and "hash tag" in str(info.value)
    with pytest.raises(InvalidQueueName, match="string"):
        keys.check_queue(None)


@pytest.mark.parametrize("name", ["a{b", "a}b"])
def test_apply_async_queue_is_refused(app, name):
    with pytest.raises(InvalidQueueName, match=r"apply_async\(queue=...\)"):
        app.build_message(app.plain.name, options={"queue": name})


@pytest.mark.parametrize("routes", [{"t.plain": "a}b"}, {"t.*": {"queue": "x{y"}},
                                    [{"other": "ok"}, {"t.plain": "{z}"}]])
def test_task_routes_are_refused_when_read(app, routes):
    app.conf.task_routes = routes
    with pytest.raises(InvalidQueueName, match="task_routes"):
        app.build_message(app.plain.name)


def test_a_router_function_answering_a_bad_name_is_refused(app):
    app.conf.task_routes = [lambda name, args, kwargs, options, task=None, **kw: {"queue": "by}fn"}]
    with pytest.raises(InvalidQueueName, match="task_routes"):
        app.build_message(app.plain.name, (1,))


def test_task_default_queue_is_refused(app):
    app.conf.task_default_queue = "de{fault"
    with pytest.raises(InvalidQueueName, match="task_default_queue"):
        app.build_message(app.plain.name)


def test_the_task_queue_option_is_refused_at_decoration(app):
    with pytest.raises(InvalidQueueName, match="queue option of task"):
        @app.task(queue="bad}")
        def other():
            pass


def test_good_names_still_route(app):
    app.conf.task_routes = {"t.plain": "routed.queue:1"}
    assert app.build_message(app.plain.name).queue == "routed.queue:1"
    assert app.build_message(app.plain.name, options={"queue": "explicit"}).queue == "explicit"


@pytest.mark.integration  # starts the CLI (it exits before connecting to Redis)
@pytest.mark.parametrize("argv", [["worker", "-Q", "default,a}b"], ["purge", "-f", "-Q", "x{y"]])
def test_the_cli_refuses_a_bad_queue_with_one_line(argv, tmp_path):
    from procs import APPS
    env = {"PYTHONPATH": str(APPS), "MINIQUE_BROKER_URL": "redis://127.0.0.1:1/0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "minique.cli", "-A", "testapp", *argv], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "invalid queue name" in done.stderr and "Traceback" not in done.stderr, done.stderr
