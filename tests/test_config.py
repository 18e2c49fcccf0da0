"""Settings: Celery names and defaults, overrides, warnings (pure)."""
import os
import types
import warnings

import pytest

from minique import Minique
from minique.config import Settings
from minique.exceptions import ConfigurationError


def test_defaults_and_access_styles():
    conf = Settings()
    assert conf.task_default_queue == "default"
    assert conf["worker_prefetch_multiplier"] == 4
    assert conf.task_acks_late is False
    conf.task_acks_late = True
    assert conf["task_acks_late"] is True


def test_unknown_setting_warns():
    conf = Settings()
    with pytest.warns(UserWarning, match="unknown setting 'task_acks_lte'"):
        conf.task_acks_lte = True


def test_environment_overrides_urls(monkeypatch):
    conf = Settings(broker_url="redis://a/0")
    monkeypatch.setenv("MINIQUE_BROKER_URL", "redis://b/0")
    assert conf.broker_url == "redis://b/0"
    assert conf.result_url == "redis://b/0"


def test_config_from_object_module_and_name(tmp_path, monkeypatch):
    (tmp_path / "myconf.py").write_text("import os\nbroker_url = 'redis://x/1'\ntask_serializer = 'msgpack'\n"
                                        "def helper():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("MINIQUE_BROKER_URL", raising=False)
    app = Minique("t")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app.config_from_object("myconf")
    assert app.conf.broker_url == "redis://x/1"
    assert app.conf.task_serializer == "msgpack"
    obj = types.SimpleNamespace(result_expires=10)
    app.config_from_object(obj)
    assert app.conf.result_expires == 10


def test_missing_config_module_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="cannot import config module 'no_such_conf'"):
        Minique("t").config_from_object("no_such_conf")


def test_broker_and_backend_keywords(monkeypatch):
    monkeypatch.delenv("MINIQUE_BROKER_URL", raising=False)
    monkeypatch.delenv("MINIQUE_RESULT_BACKEND", raising=False)
    app = Minique("t", broker="redis://h:1/2", backend="redis://h:1/3", include=["m"])
    assert (app.conf.broker_url, app.conf.result_backend, app.conf.include) == (
        "redis://h:1/2", "redis://h:1/3", ("m",))


def test_task_options_and_unknown_option():
    app = Minique("t")

    @app.task(name="x.y", queue="q", max_retries=5, bind=True)
    def f(self, a):
        return (self.request.called_directly, a)
    assert f.name == "x.y" and f.queue == "q" and f.max_retries == 5
    assert f(1) == (True, 1)  # calling runs in-process
    with pytest.raises(ConfigurationError, match="unknown task option"):
        app.task(retries=1)(lambda: None)


def test_default_task_name_is_module_dot_function():
    app = Minique("t")

    @app.task
    def g():
        pass
    assert g.name == f"{__name__}.g"


@pytest.mark.parametrize("url, shown", [
    ("redis://:hunter2@redis.example:6379/0", "redis://:***@redis.example:6379/0"),
    ("redis://app:hunter2@10.0.0.1/1", "redis://app:***@10.0.0.1/1"),
    ("rediss://app:hun:ter@2@redis.example:6380/0?ssl_cert_reqs=none", "rediss://app:***@redis.example:6380/0"
                                                                        "?ssl_cert_reqs=none"),
    ("unix://:hunter2@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
    ("redis://redis.example:6379/0?password=hunter2&db=1", "redis://redis.example:6379/0?password=***&db=1"),
    ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ("redis://app@localhost/0", "redis://app@localhost/0"),  # a user name alone is no secret
    ("redis+embedded://./.minique-demo", "redis+embedded://./.minique-demo"),
    ("not a url", "not a url"),
    ("redis://:hunter2@[::1/0", "redis://:***@[::1/0"),  # unparseable (a broken IPv6 host): still masked
])
def test_mask_url_hides_the_password_and_keeps_the_rest(url, shown):
    from minique.config import mask_url
    assert mask_url(url) == shown
    assert "hunter2" not in mask_url(url)


def test_worker_settings_are_checked_with_celery_names():
    from minique.config import check_worker_settings
    conf = Settings()
    assert check_worker_settings(2, 4, conf) == (2, 4)
    assert check_worker_settings(0, 0, conf) == (os.cpu_count() or 1, 0)  # 0: the CPU count, as in Celery
    assert check_worker_settings(None, "8", conf) == (os.cpu_count() or 1, 8)
    for args, said in (((-3, 4), "worker_concurrency (-c/--concurrency) must be a number of pool processes >= 1 "
                                 "(0 or unset: the CPU count), not -3"),
                       ((True, 4), "worker_concurrency (-c/--concurrency) must be"),
                       ((1.5, 4), "worker_concurrency (-c/--concurrency) must be"),
                       ((1, -1), "worker_prefetch_multiplier (--prefetch-multiplier) must be a number of messages "
                                 ">= 0, not -1"),
                       ((1, None), "worker_prefetch_multiplier (--prefetch-multiplier) must be")):
        with pytest.raises(ConfigurationError) as info:
            check_worker_settings(*args, conf)
        assert said in str(info.value)
    with pytest.raises(ConfigurationError, match=r"worker_max_tasks_per_child \(--max-tasks-per-child\) must be"):
        check_worker_settings(1, 1, conf, max_tasks_per_child=0)
    with pytest.raises(ConfigurationError, match=r"worker_max_memory_per_child \(--max-memory-per-child\) must be"):
        check_worker_settings(1, 1, conf, max_memory_per_child=-5)
    for name, value in (("task_time_limit", -5), ("task_time_limit", 0), ("task_soft_time_limit", float("nan")),
                        ("task_soft_time_limit", "soon"), ("broker_connection_timeout", 0),
                        ("worker_heartbeat_interval", -1), ("broker_connection_max_retries", -1)):
        bad = Settings(**{name: value})
        with pytest.raises(ConfigurationError, match=f"^{name}"):
            check_worker_settings(1, 1, bad)
    assert check_worker_settings(1, 1, Settings(task_time_limit=30, task_soft_time_limit=2.5,
                                                broker_connection_max_retries=None)) == (1, 1)


def test_log_level_names_are_checked():
    import logging

    from minique.logs import parse_level
    assert parse_level("debug") == logging.DEBUG and parse_level("WARN") == logging.WARNING
    for bad in ("verbose", "BASIC_FORMAT", "", "10"):
        with pytest.raises(ValueError, match="unknown log level .* \\(one of DEBUG, INFO, WARNING, ERROR, CRITICAL"):
            parse_level(bad)


def test_metrics_host_is_loopback_unless_set(monkeypatch):
    monkeypatch.delenv("MINIQUE_METRICS_HOST", raising=False)
    assert Settings().worker_metrics_host == "127.0.0.1"
    assert Settings(worker_metrics_host="0.0.0.0").worker_metrics_host == "0.0.0.0"
    monkeypatch.setenv("MINIQUE_METRICS_HOST", "10.1.2.3")  # the environment still overrides
    assert Settings(worker_metrics_host="0.0.0.0").worker_metrics_host == "10.1.2.3"


def test_connection_settings_keep_celery_names_and_defaults():
    conf = Settings()
    assert conf.broker_connection_retry_on_startup is True
    assert conf.broker_connection_max_retries == 100
