"""What an app does for Django (Celery's `celery.fixups.django`), installed when the app is created
with DJANGO_SETTINGS_MODULE set and Django importable:

- the project directory on sys.path, and `DjangoTask` as the app's task class (unless one was given);
- when the worker or beat imports its modules (`signals.import_modules`): `django.setup()` and
  Django's system checks (CELERY_SKIP_CHECKS set: no checks), before any task module is imported;
- `autodiscover_tasks()` without packages: every installed Django app;
- in a worker (`signals.worker_init`): database connections inherited from the parent are dropped in
  each pool process (`worker_process_init`), and closed before and after each task (`task_prerun`,
  `task_postrun`; eager calls excepted), the caches closed after it.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any, List, Optional

from ... import signals

TASK_CLS = "minique.contrib.django.task:DjangoTask"


def fixup(app: Any, custom_task_cls: bool = False, env: str = "DJANGO_SETTINGS_MODULE") -> Optional["DjangoFixup"]:
    """Install the Django fix-up on `app` if the environment names a Django settings module."""
    if not os.environ.get(env):
        return None
    try:
        import django  # noqa: F401
    except ImportError:
        warnings.warn(f"{env} is set but Django is not installed: no Django fix-ups", stacklevel=3)
        return None
    return DjangoFixup(app).install(custom_task_cls)


class DjangoFixup:
    """Django's set-up for one app (see the module's docstring)."""

    def __init__(self, app: Any):
        self.app = app
        self.worker_fixup: Optional[DjangoWorkerFixup] = None

    def install(self, custom_task_cls: bool = False) -> "DjangoFixup":
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        if not custom_task_cls:
            self.app.task_cls = TASK_CLS
        signals.import_modules.connect(self.on_import_modules, sender=self.app)
        signals.worker_init.connect(self.on_worker_init)
        return self

    def on_import_modules(self, **kwargs: Any) -> None:
        """django.setup() (and the system checks) before the task modules are imported."""
        import django
        django.setup()
        if not os.environ.get("CELERY_SKIP_CHECKS"):
            from django.core.checks import run_checks
            run_checks()

    def on_worker_init(self, sender: Any = None, **kwargs: Any) -> None:
        if sender is not None and getattr(sender, "app", self.app) is not self.app:
            return  # another app's worker
        if self.worker_fixup is None:
            self.worker_fixup = DjangoWorkerFixup(self.app).install()

    def autodiscover_tasks(self) -> List[str]:
        from django.apps import apps
        return [config.name for config in apps.get_app_configs()]


class DjangoWorkerFixup:
    """Database connections and caches around tasks in a worker (Celery's DjangoWorkerFixup)."""

    def __init__(self, app: Any):
        import django.core.cache
        import django.db
        self.app = app
        self.db = django.db
        self.cache = django.core.cache
        self.interface_errors = (django.db.utils.InterfaceError,)

    def install(self) -> "DjangoWorkerFixup":
        signals.task_prerun.connect(self.on_task_prerun)
        signals.task_postrun.connect(self.on_task_postrun)
        signals.worker_process_init.connect(self.on_worker_process_init)
        self.close_database()
        self.close_cache()
        return self

    def on_worker_process_init(self, **kwargs: Any) -> None:
        # A connection the parent opened is the parent's too: drop its file descriptor here without a
        # close() that would talk to the server (and break the parent's side), then forget it.
        for conn in self.db.connections.all():
            if conn and conn.connection:
                try:
                    os.close(conn.connection.fileno())
                except (AttributeError, OSError, TypeError):
                    pass
        self.close_database()
        self.close_cache()

    def on_task_prerun(self, sender: Any = None, **kwargs: Any) -> None:
        if not getattr(getattr(sender, "request", None), "is_eager", False):
            self.close_database()

    def on_task_postrun(self, sender: Any = None, **kwargs: Any) -> None:
        if not getattr(getattr(sender, "request", None), "is_eager", False):
            self.close_database()
            self.close_cache()

    def close_database(self, **kwargs: Any) -> None:
        try:
            connections = self.db.connections.all(initialized_only=True)
        except TypeError:  # Django < 4.1
            connections = self.db.connections.all()
        for conn in connections:
            try:
                conn.close()
            except self.interface_errors:
                pass
            except self.db.DatabaseError as exc:
                if "closed" not in str(exc) and "not connected" not in str(exc):
                    raise

    def close_cache(self) -> None:
        try:
            self.cache.close_caches()
        except (TypeError, AttributeError):
            pass
