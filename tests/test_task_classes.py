"""Task classes: `base=` and `Minique(task_cls=...)`; class attributes are option defaults."""
import pytest

from minique import Minique, Task
from minique.exceptions import ConfigurationError


class Base(Task):
    max_retries = 7
    queue = "from-class"
    autoretry_for = (KeyError,)


def test_base_class_attributes_are_defaults_and_options_still_win():
    app = Minique("t", broker="redis://localhost:1/0")

    @app.task(base=Base)
    def f():
        pass

    @app.task(base=Base, queue="given", max_retries=1)
    def g():
        pass

    assert type(f) is Base and f.max_retries == 7 and f.policy.max_retries == 7
    assert f.queue == "from-class" and f.autoretry_for == (KeyError,)
    assert g.queue == "given" and g.policy.max_retries == 1
    assert app.build_message(f.name).queue == "from-class"


def test_task_cls_by_class_or_name_and_bad_classes_refused():
    app = Minique("t", broker="redis://localhost:1/0", task_cls=f"{__name__}:Base")

    @app.task
    def f():
        pass

    assert type(f) is Base
    with pytest.raises(ConfigurationError, match="subclass of minique.Task"):
        app.task(base=object)(lambda: None)
