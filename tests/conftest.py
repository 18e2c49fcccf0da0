"""Shared fixtures.

Redis: every test talks to a private redis-server started by the suite
(``tests/redis_server.py``), never to a system Redis on port 6379.

* ``redis_server`` (session): one in-memory server for the whole run.
* ``redis_url`` (function): ``redis://127.0.0.1:PORT/0`` of that server,
  flushed before the test.
* ``redis_client`` (function): a ``redis.Redis`` on ``redis_url``.
* ``fresh_redis`` (function): a brand-new server with AOF on, in
  ``tmp_path``, for fault tests that kill / restart / pause it.

Tiers: every test gets exactly one of the markers ``unit``, ``integration``,
``fault`` (``python -m pytest -m unit`` runs the fast tier):

* ``fault``: in a fault file (``FAULT_FILES``) or using ``fresh_redis``;
* ``integration``: using a Redis or worker-process fixture (``INTEGRATION_FIXTURES``,
  also through a fixture of its own that uses one);
* ``unit``: everything else. A unit test runs in this process only: it starts no
  process and opens no connection (``unit_tests_stay_in_process`` fails it if it does).

A test that the rule gets wrong carries its tier as an explicit marker, which wins.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from redis_server import RedisServer

DEFAULT_TEST_TIMEOUT = 60  # seconds; only used if pytest-timeout is unconfigured


# --------------------------------------------------------------------------
# Session-wide settings
# --------------------------------------------------------------------------

TIERS = ("unit", "integration", "fault")
FAULT_FILES = {"test_reliability.py"}
FAULT_FIXTURES = {"fresh_redis"}
INTEGRATION_FIXTURES = {"redis_server", "redis_url", "redis_client", "procs", "client_app", "redis_cluster"}


def tier_of(item) -> str:
    """The test's tier: its explicit tier marker, else the rule of the module docstring."""
    explicit = {m.name for m in item.iter_markers() if m.name in TIERS}
    if len(explicit) > 1:
        raise pytest.UsageError(f"{item.nodeid} has the tier markers {sorted(explicit)}: give it one")
    if explicit:
        return explicit.pop()
    fixtures = set(getattr(item, "fixturenames", ()))
    if item.path.name in FAULT_FILES or fixtures & FAULT_FIXTURES:
        return "fault"
    if fixtures & INTEGRATION_FIXTURES:
        return "integration"
    return "unit"


def pytest_collection_modifyitems(config, items):
    """Give every test its tier marker, and a timeout when none is configured anywhere."""
    for item in items:
        tier = tier_of(item)
        if item.get_closest_marker(tier) is None:
            item.add_marker(tier)
    if not config.pluginmanager.hasplugin("timeout"):
        return
    if (
        config.getoption("timeout", None) is not None
        or os.environ.get("PYTEST_TIMEOUT")
        or config.getini("timeout")
    ):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT))


@pytest.fixture(autouse=True)
def unit_tests_stay_in_process(request, monkeypatch):
    """A unit test that starts a process or opens a connection fails: it belongs in another tier."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    refused = []

    def refuse(what):
        def refuse_call(*args, **kwargs):
            refused.append(what)
            raise RuntimeError(f"a unit test {what}: mark it integration (or fault)")
        return refuse_call

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("started a process"))
    monkeypatch.setattr(os, "fork", refuse("forked"))
    monkeypatch.setattr(socket.socket, "connect", refuse("opened a connection"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("opened a connection"))
    yield
    if refused:  # also when the code under test caught the RuntimeError
        pytest.fail(f"{request.node.nodeid} is in the unit tier but {', '.join(sorted(set(refused)))}: "
                    "mark it integration or fault", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def minique_test_env():
    """MINIQUE_TEST=1 for the run (and for subprocesses it starts)."""
    previous = os.environ.get("MINIQUE_TEST")
    os.environ["MINIQUE_TEST"] = "1"
    yield
    if previous is None:
        os.environ.pop("MINIQUE_TEST", None)
    else:
        os.environ["MINIQUE_TEST"] = previous


# --------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One private, in-memory redis-server for the whole session."""
    server = RedisServer(tmp_path_factory.mktemp("redis-session"), appendonly=False)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(redis_server):
    """URL (db 0) of the session server, emptied before the test."""
    if not redis_server.running:  # a test may have stopped it
        redis_server.start()
    redis_server.flushall()
    return redis_server.url(0)


@pytest.fixture
def redis_client(redis_server, redis_url):
    """A redis-py client on ``redis_url``."""
    client = redis_server.client(0)
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A 3-master Redis Cluster for the whole session (tests/redis_multi.py), started on first use;
    tests empty it with `flushall()`. Skipped where redis-server has no cluster mode."""
    from redis_multi import Cluster, server_supports
    why = server_supports("cluster")
    if why:
        pytest.skip(why)
    cluster = Cluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def fresh_redis(tmp_path):
    """A new private redis-server with AOF on (appendfsync always).

    Fault tests may kill(), stop(), restart(), pause() it; it is stopped at
    teardown whatever state it was left in.
    """
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    server.kill()


# --------------------------------------------------------------------------
# Worker / beat subprocesses
# --------------------------------------------------------------------------
# Fixtures that start `minique worker` / `minique beat` subprocesses go here.
# Start them against `redis_url` (or `fresh_redis.url()`), pass os.environ
# (MINIQUE_TEST=1 is already set), and stop them at teardown with a bounded
# wait followed by kill().


@pytest.fixture
def procs(tmp_path, redis_url):
    """Start `minique worker` / `minique beat` subprocesses against the test's Redis; all killed at the end."""
    from procs import Processes
    p = Processes(tmp_path, redis_url)
    yield p
    p.close()


@pytest.fixture
def fresh_app(fresh_redis, monkeypatch):
    """testapp imported here, pointed at the AOF server of `fresh_redis`."""
    from procs import drop_testapp, import_testapp
    testapp = import_testapp(monkeypatch, fresh_redis.url())
    yield testapp
    drop_testapp(testapp)


@pytest.fixture
def client_app(redis_url, monkeypatch):
    """The test app imported in this process (the client side), pointed at the test's Redis."""
    from procs import drop_testapp, import_testapp
    testapp = import_testapp(monkeypatch, redis_url)
    yield testapp
    drop_testapp(testapp)
