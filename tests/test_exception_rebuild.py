"""Exceptions are rebuilt from stored results only from classes already loaded, without importing
anything: a result (which anyone who can write to Redis can forge) must not make a client import
a module it names (issue 16). Only Exception subclasses; anything else is a RemoteError."""
import sys
import textwrap

import pytest

from minique import serializers, states
from minique.backend import ResultBackend, exception_from_dict, exception_to_dict
from minique.exceptions import RemoteError, TaskRevokedError


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """A folder on sys.path whose modules leave a file behind when they are imported."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name, body=""):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
            import pathlib
            pathlib.Path({str(tmp_path / (name + '.imported'))!r}).write_text("imported")
            class Boom(Exception):
                pass
        """) + textwrap.dedent(body))
        return tmp_path / f"{name}.imported"
    yield write
    for name in [n for n in sys.modules if n.startswith("rebuild_probe_")]:
        sys.modules.pop(name)


def test_a_result_naming_a_module_not_imported_does_not_import_it(module_dir):
    mark = module_dir("rebuild_probe_a")
    exc = exception_from_dict({"exc_type": "Boom", "exc_module": "rebuild_probe_a", "exc_message": ["hi"]}, "tb")
    assert isinstance(exc, RemoteError) and exc.exc_type == "rebuild_probe_a.Boom" and "hi" in str(exc)
    assert exc.remote_traceback == "tb"
    assert "rebuild_probe_a" not in sys.modules and not mark.exists()


def test_the_same_class_is_rebuilt_once_its_module_is_loaded_here(module_dir):
    module_dir("rebuild_probe_b")
    import rebuild_probe_b
    exc = exception_from_dict({"exc_type": "Boom", "exc_module": "rebuild_probe_b", "exc_message": ["hi"]})
    assert type(exc) is rebuild_probe_b.Boom and exc.args == ("hi",)


def test_a_module_getattr_is_not_called(module_dir):
    module_dir("rebuild_probe_c", """
        calls = []
        def __getattr__(name):
            calls.append(name)
            import rebuild_probe_c_lazy  # a lazy import a result must not trigger
            return rebuild_probe_c_lazy.Lazy
    """)
    lazy_mark = module_dir("rebuild_probe_c_lazy")
    import rebuild_probe_c
    exc = exception_from_dict({"exc_type": "Lazy", "exc_module": "rebuild_probe_c", "exc_message": []})
    assert isinstance(exc, RemoteError)
    assert rebuild_probe_c.calls == [] and "rebuild_probe_c_lazy" not in sys.modules and not lazy_mark.exists()


@pytest.mark.parametrize("exc_module,exc_type", [
    ("builtins", "SystemExit"),          # BaseException, not Exception: get() would end the client
    ("builtins", "KeyboardInterrupt"),
    ("builtins", "object"),              # a class, not an exception
    ("os", "system"),                    # not a class
    ("builtins", "ValueError.__class__"),  # dunders are never walked
    ("builtins", "ValueError.mro"),
    ("os", "path.join"),                 # a module attribute of a module: not a class path
    ("no_such_module_anywhere", "Error"),
    (None, "ValueError"),                # (missing module: builtins)
    ("builtins", 42),
    (["builtins"], "ValueError"),
])
def test_anything_but_a_loaded_exception_class_is_a_remote_error(exc_module, exc_type):
    exc = exception_from_dict({"exc_type": exc_type, "exc_module": exc_module, "exc_message": ["m"]})
    if exc_module is None:
        assert type(exc) is ValueError
    else:
        assert isinstance(exc, RemoteError)


def test_loaded_classes_are_rebuilt_also_nested_ones():
    assert type(exception_from_dict({"exc_type": "ValueError", "exc_module": "builtins", "exc_message": ["x"]})) \
        is ValueError
    assert type(exception_from_dict(exception_to_dict(TaskRevokedError("r")))) is TaskRevokedError

    class Outer:
        class Inner(Exception):
            pass
    this = sys.modules[__name__]
    this.Outer = Outer  # a class path with a dot: Outer.Inner
    try:
        exc = exception_from_dict({"exc_type": "Outer.Inner", "exc_module": __name__, "exc_message": ["n"]})
        assert type(exc) is Outer.Inner
    finally:
        del this.Outer


def test_decode_meta_goes_through_the_same_rules(module_dir):
    mark = module_dir("rebuild_probe_d")
    backend = ResultBackend(None, None, "json", frozenset({"json"}))
    raw = serializers.pack({"id": "t", "s": states.FAILURE, "ct": "json", "t": 0.0, "tb": "remote tb",
                            "r": serializers.dumps({"exc_type": "Boom", "exc_module": "rebuild_probe_d",
                                                    "exc_message": ["no"]}, "json")})
    result = backend.decode_meta(raw)["result"]
    assert isinstance(result, RemoteError) and result.remote_traceback == "remote tb"
    assert "rebuild_probe_d" not in sys.modules and not mark.exists()


def test_through_a_worker_the_client_gets_a_remote_error_until_it_loads_the_class(procs, client_app, tmp_path,
                                                                                    monkeypatch):
    procs.worker("-c", "1")
    mark = tmp_path / "errors-imported"
    monkeypatch.setenv("TESTAPP_ERRORS_MARK", str(mark))  # the client's imports only (the worker started already)
    sys.modules.pop("testapp_errors", None)
    r = client_app.fail_with_own_class.delay("from the worker")
    with pytest.raises(RemoteError) as info:
        r.get(timeout=10)
    assert info.value.exc_type == "testapp_errors.OwnError" and "from the worker" in str(info.value)
    assert "OwnError" in info.value.remote_traceback
    assert "testapp_errors" not in sys.modules and not mark.exists()
    import testapp_errors  # the client's own choice: now the class is known here
    try:
        with pytest.raises(testapp_errors.OwnError, match="from the worker"):
            client_app.app.AsyncResult(r.id).get(timeout=10)
    finally:
        sys.modules.pop("testapp_errors", None)
