"""Finding apps and tasks as Celery does, in-process: -A resolution, lazy configuration and the app
signals, add_periodic_task before and after configuration, config_from_object's forms and namespace,
shared_task and current_app, autodiscover_tasks (the CLI runs of these are in tests/test_projects.py)."""
from __future__ import annotations

import sys
import textwrap
import types
import warnings

import pytest

from minique import Minique, Task, context, crontab, current_app, shared_task
from minique.beat import parse_entries
from minique.discovery import find_app
from minique.exceptions import ConfigurationError
from minique.shared import get_current_app
from minique.signals import import_modules


@pytest.fixture
def pkgdir(tmp_path, monkeypatch):
    """A directory on sys.path (and the cwd) to write modules into; what they import is forgotten after."""
    monkeypatch.syspath_prepend(str(tmp_path))  # (also restores sys.path after find_app's cwd insert)
    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


APP = "from minique import Minique\n{name} = Minique({main!r})\n"


# --- -A -------------------------------------------------------------------------------------------

def test_find_app_follows_celerys_order(pkgdir):
    write(pkgdir, {
        "m_app.py": APP.format(name="app", main="a") + "celery = Minique('not this')\n",
        "m_celery.py": APP.format(name="celery", main="c"),
        "m_any.py": APP.format(name="whatever", main="any"),
        "nextsteps/__init__.py": "",
        "nextsteps/celery.py": APP.format(name="app", main="nextsteps"),
        "djangolike/__init__.py": "from .celery import app as celery_app\n",
        "djangolike/celery.py": APP.format(name="app", main="djangolike"),
        "named.py": APP.format(name="app", main="first") + APP.format(name="other", main="second"),
    })
    assert find_app("m_app").main == "a"
    assert find_app("m_celery").main == "c"
    assert find_app("m_any").main == "any"
    assert find_app("nextsteps").main == "nextsteps"      # a package: its celery module
    assert find_app("djangolike").main == "djangolike"    # `celery` there is the module: skipped, then .celery
    assert find_app("nextsteps.celery").main == "nextsteps"
    assert find_app("named:other").main == "second"
    assert find_app("named.other").main == "second"


def test_find_app_errors_say_what_is_wrong(pkgdir):
    write(pkgdir, {
        "empty.py": "x = 1\n",
        "notapp.py": "app = 42\n",
        "broken/__init__.py": "",
        "broken/celery.py": "import no_such_dependency\n",
    })
    with pytest.raises(ConfigurationError, match="no minique app found in module 'empty'"):
        find_app("empty")
    with pytest.raises(ConfigurationError, match="42 is not a minique app"):
        find_app("notapp")
    with pytest.raises(ImportError) as info:  # an import error inside proj/celery.py is not "not found"
        find_app("broken")
    assert info.value.name == "no_such_dependency"
    with pytest.raises(ImportError):
        find_app("no_such_module_at_all")


# --- configuration and the app signals --------------------------------------------------------------

def test_configuration_is_lazy_and_the_signals_fire_once_in_order():
    app = Minique("t", broker="redis://localhost:1/0")
    seen = []

    @app.on_configure.connect
    def configuring(sender, **kw):
        seen.append(("configure", sender, sender.conf.task_serializer))  # a read in here: the source not yet

    @app.on_after_configure.connect
    def configured(sender, source, **kw):
        seen.append(("after_configure", sender, source is sender.conf, source.result_expires))

    app.conf.update(result_expires=60)  # a write configures nothing
    app.config_from_object({"result_expires": 5, "task_serializer": "msgpack"})
    assert seen == [] and not app.configured
    assert app.conf.task_serializer == "msgpack"  # the first read
    assert seen == [("configure", app, "json"), ("after_configure", app, True, 60)]  # the write won over the source
    assert app.conf.broker_url == "redis://localhost:1/0"  # (a second read: no signal again)
    assert len(seen) == 2 and app.configured


def test_add_periodic_task_from_on_after_configure_feeds_beat_like_beat_schedule():
    app = Minique("t", broker="redis://localhost:1/0")

    @app.task
    def say(word, times=1):
        return word * times

    @app.on_after_configure.connect
    def setup(sender, **kw):
        sender.add_periodic_task(10.0, say.s("hello"), name="hello every 10")
        sender.add_periodic_task(crontab(hour=7, minute=30, day_of_week=1), say.s("monday", times=2),
                                 expires=60)
        sender.add_periodic_task(30, say, args=("plain",))

    early = app.add_periodic_task(5, say.s("early"), name="early")  # before configuration: waits
    app.config_from_object({"beat_schedule": {"from-conf": {"task": say.name, "schedule": 1.0}}})
    schedule = app.conf.beat_schedule
    assert early == "early"
    assert set(schedule) == {"from-conf", "early", "hello every 10", f"{say.name}('monday', times=2)",
                             f"{say.name}('plain')"}
    assert schedule["hello every 10"] == {"task": say.name, "schedule": 10.0, "args": ("hello",), "kwargs": {},
                                          "options": {}}
    monday = schedule[f"{say.name}('monday', times=2)"]
    assert monday["kwargs"] == {"times": 2} and monday["options"] == {"expires": 60}
    entries = parse_entries(schedule, None, app)  # beat reads them as it reads beat_schedule
    assert entries["hello every 10"].args == ("hello",)
    app.add_periodic_task(2, say.s("late"), name="late")  # after configuration: at once
    assert app.conf.beat_schedule["late"]["args"] == ("late",)


def test_finalize_and_import_modules(pkgdir):
    write(pkgdir, {"inc_tasks.py": "from minique import current_app\n"
                                   "@current_app.task\ndef f():\n    return 1\n"})
    app = Minique("t", broker="redis://localhost:1/0", include=["inc_tasks"])
    finalized, imported = [], []
    app.on_after_finalize.connect(lambda sender, **kw: finalized.append(sender), weak=False)
    import_modules.connect(lambda sender, **kw: imported.append(sender), sender=app, weak=False)
    app.import_modules()
    app.import_modules()
    assert finalized == [app] and app.finalized
    assert imported == [app, app]
    assert "inc_tasks.f" in app.tasks


def test_config_from_object_forms_namespace_and_envvar(pkgdir, monkeypatch):
    write(pkgdir, {"djsettings.py": """
        class Settings:
            CELERY_BROKER_URL = "redis://from-namespace:6379/0"
            CELERY_TASK_ACKS_LATE = True
            TASK_DEFAULT_QUEUE = "not-namespaced"
            DEBUG = False
        settings = Settings()
        """, "plainconf.py": "result_expires = 7\n"})
    monkeypatch.delenv("MINIQUE_BROKER_URL", raising=False)
    app = Minique("t")
    app.config_from_object("djsettings:settings", namespace="CELERY")
    assert app.conf.broker_url == "redis://from-namespace:6379/0" and app.conf.task_acks_late is True
    assert app.conf.task_default_queue == "default"
    assert app.namespace == "CELERY"

    app2 = Minique("t2", broker="redis://explicit:1/0", namespace="CELERY")  # Celery(namespace=...) too
    app2.config_from_object("djsettings.settings")
    assert app2.conf.broker_url == "redis://explicit:1/0"  # written explicitly: wins over the source
    assert app2.conf.task_acks_late is True

    monkeypatch.setenv("MY_CONFIG", "plainconf")
    app3 = Minique("t3")
    app3.config_from_envvar("MY_CONFIG")
    assert app3.conf.result_expires == 7
    with pytest.raises(ConfigurationError, match="MISSING_VAR is not set"):
        app3.config_from_envvar("MISSING_VAR")
    app3.config_from_envvar("MISSING_VAR", silent=True)
    with pytest.raises(ConfigurationError, match="cannot import config module 'djsettings:nope'"):
        app3.config_from_object("djsettings:nope")
    app3.config_from_object(types.SimpleNamespace(result_expires=9))  # configured: read at once
    assert app3.conf.result_expires == 9


def test_old_upper_case_names_without_a_namespace_are_named_in_a_warning():
    app = Minique("t")
    with pytest.warns(UserWarning, match="not read: BROKER_URL, CELERY_RESULT_BACKEND; use the lower-case"):
        app.config_from_object({"BROKER_URL": "redis://x/0", "CELERY_RESULT_BACKEND": "redis://x/1", "DEBUG": 1},
                               force=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app.config_from_object({"CELERY_BROKER_URL": "redis://x/0", "DEBUG": 1}, namespace="CELERY", force=True)


# --- shared_task, current_app ---------------------------------------------------------------------

def test_shared_task_registers_in_apps_made_before_and_after_and_follows_the_current_app():
    before = Minique("before", broker="redis://localhost:1/0")
    finalized = Minique("finalized", broker="redis://localhost:1/0")
    finalized.finalize()

    @shared_task(name="shared.mul", queue="math")
    def mul(x, y):
        return x * y

    @shared_task(bind=True)
    def who(self):
        return self.app.main

    assert "shared.mul" in finalized.tasks  # a finalized app takes it at once
    assert "shared.mul" not in before.tasks  # others when they finalize
    after = Minique("after", broker="redis://localhost:1/0")
    assert mul.app is after  # the proxy's task is the current app's (which is finalized for it)
    assert isinstance(mul, Task) and mul.name == "shared.mul" and mul.queue == "math"
    assert mul(3, 4) == 12 and who() == "after"
    before.finalize()
    assert before.tasks["shared.mul"].app is before
    before.set_current()
    assert who() == "before" and mul.s(1, 2).app is before
    assert current_app.main == "before" and current_app._get_current_object() is before


def test_shared_task_declared_before_any_app_exists(monkeypatch):
    import weakref
    monkeypatch.setattr(context, "_current_app", None)
    monkeypatch.setattr(context, "_apps", weakref.WeakSet())

    @shared_task
    def early(x):
        return x + 1

    assert context.apps() == []  # declaring made no app
    app = Minique("later", broker="redis://localhost:1/0")
    assert early.app is app and early.name == f"{__name__}.early" and early.delay.__self__.app is app
    assert early.apply((1,)).get() == 2


def test_current_app_without_any_app_is_a_default_app(monkeypatch):
    monkeypatch.setattr(context, "_current_app", None)
    app = get_current_app()
    assert app.main == "default" and current_app.main == "default"


# --- autodiscover_tasks ---------------------------------------------------------------------------

def test_autodiscover_tasks_is_lazy_until_the_modules_are_imported(pkgdir):
    write(pkgdir, {
        "shop/__init__.py": "",
        "shop/tasks.py": "from minique import shared_task\n@shared_task\ndef buy():\n    return 'bought'\n",
        "blog/__init__.py": "",  # no tasks module: skipped
        "jobs/__init__.py": "",
        "jobs/work.py": "from minique import shared_task\n@shared_task\ndef work():\n    return 1\n",
        "bad/__init__.py": "",
        "bad/tasks.py": "import no_such_dependency_either\n",
    })
    app = Minique("t", broker="redis://localhost:1/0")
    app.autodiscover_tasks(["shop", "blog"])
    app.autodiscover_tasks(lambda: ["jobs"], related_name="work")
    assert "shop.tasks" not in sys.modules
    app.import_modules()
    assert {"shop.tasks.buy", "jobs.work.work"} <= set(app.tasks)
    assert "blog.tasks" not in sys.modules
    with pytest.raises(ImportError, match="no_such_dependency_either"):  # a broken tasks module is not skipped
        app.autodiscover_tasks(["bad"], force=True)


def test_django_fixup_only_with_django_settings(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(tmp_path))  # (restores sys.path: the fix-up puts the cwd first)
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    assert Minique("plain").task_cls is Task
    pytest.importorskip("django")
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "some.settings")
    app = Minique("dj")

    @app.task
    def f():
        pass

    assert type(f).__name__ == "DjangoTask" and hasattr(f, "delay_on_commit")
    assert Minique("custom", task_cls=Task).task_cls is Task  # a class given wins
    assert Minique("nofix", fixups=[]).task_cls is Task  # Celery's fixups=[]: none
