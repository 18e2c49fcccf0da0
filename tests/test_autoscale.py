"""Unit tests for the autoscaler's decision (minique/autoscale.py) and the daemon helpers (minique/daemon.py):
--autoscale parsing, grow/shrink with hysteresis, %n-style file names, pid-file locking."""
import os

import pytest

from minique.autoscale import Autoscaler, parse_autoscale
from minique.daemon import Pidfile, PidfileLocked, node_format, parse_umask

NO_SUCH_PID = 4_194_304 + 12_345  # above the largest pid_max Linux allows: never a live process


@pytest.mark.parametrize("value, expected", [
    ("4,1", (4, 1)), ("1,4", (4, 1)), (" 10 , 3 ", (10, 3)), ("8", (8, 1)), ("8,0", (8, 1)), ((6, 2), (6, 2)),
    ([3, 3], (3, 3)), (None, None), ("", None),
])
def test_parse_autoscale_takes_celerys_forms(value, expected):
    assert parse_autoscale(value) == expected


@pytest.mark.parametrize("value", ["x", "4,1,2", "0", "0,0", "-1,2", "4.5", "4;1", True, 2.5])
def test_parse_autoscale_refuses_the_rest(value):
    with pytest.raises(ValueError, match="autoscale"):
        parse_autoscale(value)


def test_autoscaler_grows_at_once_up_to_max():
    s = Autoscaler(4, 1, keepalive=30, now=0.0)
    assert s.decide(1.0, size=1, busy=1, waiting=0) == 1     # all busy, nothing waits: no change
    assert s.decide(2.0, size=1, busy=1, waiting=2) == 3     # busy + waiting
    assert s.decide(3.0, size=3, busy=3, waiting=50) == 4    # never above MAX
    assert s.decide(4.0, size=4, busy=4, waiting=50) == 4
    assert s.info(4) == {"max": 4, "min": 1, "current": 4, "qty": 54}


def test_autoscaler_shrinks_only_after_keepalive_and_not_below_min():
    s = Autoscaler(4, 2, keepalive=30, now=0.0)
    assert s.decide(1.0, size=2, busy=2, waiting=5) == 4     # grows (and was needed at t=1)
    assert s.decide(2.0, size=4, busy=4, waiting=0) == 4     # all needed (t=2)
    assert s.decide(3.0, size=4, busy=1, waiting=0) == 4     # idle, but within keepalive
    assert s.decide(31.0, size=4, busy=1, waiting=0) == 4
    assert s.decide(32.5, size=4, busy=3, waiting=0) == 3    # 30 s since last needed: down to the demand
    assert s.decide(33.0, size=3, busy=0, waiting=0) == 2    # (still past keepalive) never below MIN
    assert s.decide(34.0, size=2, busy=0, waiting=0) == 2


def test_autoscaler_keepalive_restarts_whenever_the_pool_is_fully_needed():
    s = Autoscaler(3, 1, keepalive=10, now=0.0)
    assert s.decide(1.0, size=3, busy=0, waiting=0) == 3
    assert s.decide(9.0, size=3, busy=3, waiting=0) == 3     # needed again at t=9
    assert s.decide(15.0, size=3, busy=0, waiting=0) == 3    # 6 s later: keeps them
    assert s.decide(19.5, size=3, busy=0, waiting=0) == 1


def test_autoscaler_refuses_bad_bounds():
    with pytest.raises(ValueError):
        Autoscaler(2, 3, keepalive=1, now=0)
    with pytest.raises(ValueError, match="keepalive"):
        Autoscaler(2, 1, keepalive=0, now=0)


def test_node_format_expands_as_celery():
    assert node_format("%n.pid", "w1@box.example.com") == "w1.pid"
    assert node_format("/var/log/%n%I.log", "w1@box.example.com") == "/var/log/w1.log"
    assert (node_format("%h-%d-%p-%i-%%.x", "w1@box.example.com")
            == "box.example.com-example.com-w1@box.example.com-0-%.x")
    assert node_format(None, "w1@box") is None
    with pytest.raises(ValueError, match="unknown format %z"):
        node_format("%z.pid", "w1@box")


def test_parse_umask():
    assert parse_umask("022") == 0o22 and parse_umask("18") == 18 and parse_umask(None) is None
    with pytest.raises(ValueError, match="--umask"):
        parse_umask("u=rwx")


def test_pidfile_is_written_refused_while_live_and_removed(tmp_path):
    path = tmp_path / "w.pid"
    lock = Pidfile(str(path)).acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    # a file naming another live process (our parent) refuses a start, and is left alone
    other = tmp_path / "other.pid"
    other.write_text(f"{os.getppid()}\n")
    with pytest.raises(PidfileLocked, match=f"live process \\(pid {os.getppid()}\\)"):
        Pidfile(str(other)).acquire()
    assert other.read_text() == f"{os.getppid()}\n"
    lock.release()
    assert not path.exists()


@pytest.mark.parametrize("content", [f"{NO_SUCH_PID}\n", "not a pid\n", ""])
def test_a_stale_pidfile_is_replaced(tmp_path, content):
    path = tmp_path / "w.pid"
    path.write_text(content)
    lock = Pidfile(str(path)).acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    lock.release()
    assert not path.exists()


def test_release_leaves_a_file_that_another_process_took(tmp_path):
    path = tmp_path / "w.pid"
    lock = Pidfile(str(path)).acquire()
    path.write_text(f"{os.getppid()}\n")  # (someone replaced it meanwhile)
    lock.release()
    assert path.read_text() == f"{os.getppid()}\n"
