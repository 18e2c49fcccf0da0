"""Settings: Celery names and defaults, overrides, warnings (pure)."""
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
