"""Finding an app and its tasks as Celery does: `-A proj` (`find_app`) and `app.autodiscover_tasks()`
(`autodiscover`, `find_related_module`).

`find_app("proj")` takes, in Celery's order: the module's `app`, then its `celery` (when not a
module), then, for a package, the app found in `proj.celery`, then any app in the module.
`"proj.tasks:app"` names the attribute; `"proj.celery.app"` the attribute after the last dot.
"""
from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any, Iterable, List, Optional

from .exceptions import ConfigurationError

_discovering = False  # Celery's race protection: a task module that autodiscovers again does nothing


def import_from_cwd(name: str) -> ModuleType:
    """Import module `name`, the current directory first on sys.path (as `celery -A` does)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return importlib.import_module(name)


def _symbol(spec: str) -> Any:
    """kombu's symbol_by_name: "module:attr", "package.attr" (an attribute), or "module"."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        obj: Any = import_from_cwd(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    module_name, _, attr = spec.rpartition(".")
    if not module_name:
        return import_from_cwd(spec)
    module = import_from_cwd(module_name)
    return getattr(module, attr)  # (AttributeError: `spec` is itself a module; the caller imports it)


def find_app(spec: str, app_type: Optional[type] = None) -> Any:
    """The app that `-A spec` names (Celery's find_app); raises ImportError, ConfigurationError."""
    if app_type is None:
        from .app import Minique
        app_type = Minique
    try:
        found = _symbol(spec)
    except AttributeError:  # the last part was not an attribute but a module
        found = import_from_cwd(spec)
    if isinstance(found, ModuleType) and ":" not in spec:
        found = _app_in_module(found, spec, app_type)
    if not isinstance(found, app_type):
        raise ConfigurationError(f"-A {spec}: {found!r} is not a minique app (a Minique/Celery instance)")
    return found


def _app_in_module(module: ModuleType, spec: str, app_type: type) -> Any:
    for name in ("app", "celery"):
        candidate = getattr(module, name, None)
        if candidate is not None and not isinstance(candidate, ModuleType):
            return candidate
    if getattr(module, "__path__", None):  # a package: its celery module (proj/celery.py)
        try:
            return find_app(f"{spec}.celery", app_type)
        except ImportError as exc:
            if exc.name != f"{spec}.celery":  # proj/celery.py exists but fails to import: say so
                raise
        except ConfigurationError:
            pass
    for value in vars(module).values():
        if isinstance(value, app_type):
            return value
    raise ConfigurationError(f"-A {spec}: no minique app found in module {module.__name__!r} (looked for "
                             f"'app', 'celery', {spec}.celery and any Minique instance; or give -A {spec}:NAME)")


def find_related_module(package: str, related_name: Optional[str]) -> Optional[ModuleType]:
    """`package.related_name` imported, or None when it does not exist (Celery's rules: an import
    error from inside that module is raised; a package given as "pkg.AppConfig" class is looked up
    one level up; related_name None means the package itself)."""
    try:
        module = importlib.import_module(package)
        if not related_name and module:
            return module
    except ModuleNotFoundError:
        package, _, _ = package.rpartition(".")
        if not package:
            raise
    module_name = f"{package}.{related_name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def autodiscover(packages: Iterable[str], related_name: Optional[str] = "tasks") -> List[ModuleType]:
    """Import `related_name` of each package that has one; returns the modules imported."""
    global _discovering
    if _discovering:
        return []
    _discovering = True
    try:
        found = [find_related_module(package, related_name) for package in packages or ()]
    finally:
        _discovering = False
    return [module for module in found if module is not None]
