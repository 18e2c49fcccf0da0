"""Caps on exception messages, tracebacks and argument reprs in events, logs and stored results,
with the cut marked (issue 16: a 1 MB exception message became a 1.3 MB event, a 1 MB log line and
a 1 MB result)."""
import json

import pytest

from minique import caps, events as events_mod, serializers
from minique.backend import ResultBackend, format_traceback
from procs import wait_for

MB = 1_000_000


# --- the pure helpers -------------------------------------------------------------------------------

def test_cut_keeps_short_texts_and_marks_what_it_leaves_out():
    assert caps.cut("short", 10) == "short"
    assert caps.cut("x" * 100, None) == "x" * 100 and caps.cut("x" * 100, 0) == "x" * 100
    out = caps.cut("a" * MB, 4096)
    assert len(out) <= 4096 and out.startswith("aaa")
    kept = out.index(" …")
    assert out.endswith(f" … [{MB - kept} more characters]")


def test_cut_tail_keeps_the_end():
    text = "start " + "m" * 50_000 + " the end"
    out = caps.cut_tail(text, 1000)
    assert len(out) <= 1000 and out.endswith(" the end") and out.startswith("[")
    assert int(out[1:out.index(" more")]) == len(text) - (len(out) - out.index("… ") - 2)


def test_exception_args_share_the_cap_and_keep_scalars():
    args = caps.exception_args(("a" * MB, 7, None, 2.5, True, b"bytes"), 4096)
    assert args[1:5] == [7, None, 2.5, True]
    assert len(args[0]) <= 4096 // 2 and "more characters]" in args[0]
    assert args[5] == "b'bytes'"
    many = caps.exception_args(tuple(range(100)), 4096)
    assert len(many) == 33 and many[-1] == "… [68 more arguments]"


def test_safe_repr_survives_a_broken_repr_and_is_cut():
    class Broken:
        def __repr__(self):
            raise RuntimeError("no")
    assert caps.safe_repr(Broken(), 100) == "<unrepresentable Broken>"
    assert len(caps.safe_repr(ValueError("v" * MB), 200)) <= 200


def test_a_stored_exception_and_traceback_are_cut():
    try:
        raise ValueError("e" * MB)
    except ValueError as exc:
        error = exc
    tb = format_traceback(error)
    assert len(tb) < 10_000 and "test_caps.py" in tb and "more characters]" in tb  # frames kept, message cut
    backend = ResultBackend(None, None, "json", frozenset({"json"}), exception_max=4096, traceback_max=2048)
    meta = serializers.unpack(backend.encode_meta("t", "FAILURE", error, tb))
    assert len(meta["tb"]) <= 2048 and meta["tb"].startswith("[")
    stored = serializers.loads(meta["r"], "json", {"json"})
    assert len(stored["exc_message"][0]) <= 4096 and stored["exc_message"][0].endswith("more characters]")


def test_events_cut_argument_reprs_with_a_mark():
    assert events_mod.short_repr(["y" * 2000] * 3).__len__() <= caps.ARGSREPR_MAX
    shown = events_mod.short_repr(list(range(200)), 50)
    assert len(shown) <= 50 and shown.endswith("more characters]")


# --- through a real worker --------------------------------------------------------------------------

def _failed_events(redis_client, task_id):
    _, found = events_mod.read(redis_client, "0-0", count=10_000)
    return [e for e in found if e.get("uuid") == task_id and e["type"] == "task-failed"]


def test_a_1mb_exception_message_is_small_in_the_result_the_event_and_the_log(procs, client_app, redis_client):
    worker = procs.worker("-c", "1")
    r = client_app.fail_big.delay(MB)
    with pytest.raises(ValueError) as info:
        r.get(timeout=20)
    message = str(info.value)
    assert len(message) <= 4096 and message.endswith("more characters]") and message.startswith("xxxx")
    assert len(r.traceback) <= 8192 and "ValueError" in r.traceback
    stored = redis_client.lindex(f"minique:res:{{{r.id}}}:ready", 0)
    assert len(stored) < 16_000                                        # was > 1 MB
    (event,) = wait_for(lambda: _failed_events(redis_client, r.id), 10, "the task-failed event")
    assert len(event["exception"]) <= 4096 and event["exception"].endswith("more characters]")
    biggest = max(len(fields[b"b"]) for _, fields in redis_client.xrange("minique:events"))
    assert biggest < 32_000                                            # was 1.3 MB
    line = wait_for(lambda: [ln for ln in worker.log().splitlines() if r.id in ln and "raised" in ln],
                    10, "the failure's log line")[0]
    assert len(line) < 5000 and "more characters]" in line             # was 1 MB


def test_the_caps_are_settings(procs, client_app, redis_client):
    settings = {"task_exception_max_size": 100, "task_traceback_max_size": 300, "task_argsrepr_max_size": 40}
    procs.worker("-c", "1", settings=json.dumps(settings))
    r = client_app.fail_big.delay(5000, "z")
    with pytest.raises(ValueError) as info:
        r.get(timeout=20)
    assert len(str(info.value)) <= 100 and str(info.value).endswith("more characters]")
    assert len(r.traceback) <= 300
    (event,) = wait_for(lambda: _failed_events(redis_client, r.id), 10, "the task-failed event")
    assert len(event["exception"]) <= 100
    big = client_app.identity.delay(list(range(300)))
    assert big.get(timeout=10) == list(range(300))

    def started():
        _, found = events_mod.read(redis_client, "0-0", count=10_000)
        return [e for e in found if e.get("uuid") == big.id and e["type"] == "task-started"]
    (event,) = wait_for(started, 10, "the task-started event")
    assert len(event["args"]) <= 40 and event["args"].endswith("more characters]")
