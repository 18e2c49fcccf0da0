"""The shared-memory slot a pool child writes and its parent reads (pure: no Redis, no processes)."""
import struct
from types import SimpleNamespace

from minique.worker.slots import PAYLOAD, UNFLUSHED, SlotTable


def _task(i, data=b"m"):
    return SimpleNamespace(id=f"id{i}", task="t", ignore_result=False), SimpleNamespace(data=data, queue="q")


def test_finished_tasks_are_kept_until_flushed_in_order():
    slot = SlotTable(2)[1]
    assert slot.running() == (0.0, 0.0, None) and slot.unflushed() == []
    for i in range(3):
        msg, delivery = _task(i)
        slot.begin(msg, delivery, 0.0, acks_late=i == 1)
        assert slot.running()[2][0] == f"id{i}"
        assert slot.end() is True
        assert slot.running()[2] is None
    assert [(p[0], p[3]) for p in slot.unflushed()] == [("id0", False), ("id1", True), ("id2", False)]
    assert slot.processed == 3
    slot.flushed()
    assert slot.unflushed() == []


def test_end_says_when_the_next_finished_task_might_not_fit():
    slot = SlotTable(1)[0]
    big = b"x" * (PAYLOAD - 600)  # the largest message a record keeps whole
    kept = 0
    while True:
        msg, delivery = _task(kept, big)
        slot.begin(msg, delivery, 0.0, acks_late=False)
        kept += 1
        if not slot.end():
            break
    assert kept * len(big) <= UNFLUSHED
    assert [p[0] for p in slot.unflushed()] == [f"id{i}" for i in range(kept)]  # none was cut off
    assert all(p[2] == big for p in slot.unflushed())


def test_slots_do_not_overlap():
    table = SlotTable(3)
    for i in range(3):
        msg, delivery = _task(i, bytes([65 + i]) * 100)
        table[i].begin(msg, delivery, 1.5, acks_late=False)
        table[i].end()
        table[i].set_terminate(f"target{i}")
    for i in range(3):
        assert [p[2] for p in table[i].unflushed()] == [bytes([65 + i]) * 100]
        assert table[i].terminate_target() == f"target{i}"


def test_the_child_never_overwrites_what_the_parent_wrote():
    slot = SlotTable(1)[0]
    slot.bump_ctl()
    slot.request_stop()
    msg, delivery = _task(0)
    slot.begin(msg, delivery, 2.0, acks_late=False)
    slot.bump_ctl()                       # news arrive while the task runs
    assert slot.end() is True
    slot.flushed()
    assert slot.ctl_seq() == 2 and slot.stop_requested() and slot.processed == 1
    slot.reset()
    assert slot.ctl_seq() == 0 and not slot.stop_requested() and slot.processed == 0
    assert slot.total == 1  # (the replaced process's task still counts in the worker's total)


def test_the_parent_never_reads_half_a_running_record():
    slot = SlotTable(1)[0]
    msg, delivery = _task(0)
    slot.begin(msg, delivery, 2.5, acks_late=True)
    started, hard, record = slot.running()
    assert hard == 2.5 and started > 0 and record.task_id == "id0" and record.acks_late
    seq = slot.current.seq()
    struct.pack_into("<Q", slot.buf, slot.current.off, seq | 1)  # the child is half-way through a write
    assert slot.running() == (0.0, 0.0, None)                    # seen as idle, never as garbage
    struct.pack_into("<Q", slot.buf, slot.current.off, seq)
    assert slot.running()[2].task_id == "id0"


def test_lanes_hold_one_record_per_task_until_its_writes_are_sent():
    table = SlotTable(2, lanes=3)
    slot, other = table[0], table[1]
    lanes = slot.lanes
    tasks = [_task(i) for i in range(3)]
    for i, (msg, delivery) in enumerate(tasks):
        lanes.begin(msg, delivery, 5.0 if i == 1 else 0.0, acks_late=i == 2)
    assert [r.task_id for _, _, r in slot.tasks()] == ["id0", "id1", "id2"]
    assert [hard for _, hard, _ in slot.tasks()] == [0.0, 5.0, 0.0]
    assert lanes.hard_limited() == 1 and other.tasks() == [] and other.lanes.high() == 0
    lanes.end(tasks[1][1])  # its body ended: no longer running, listed until its writes are sent
    assert [r.task_id for _, _, r in slot.tasks()] == ["id0", "id2"]
    assert [r.task_id for r in slot.unflushed()] == ["id1"] and lanes.hard_limited() == 0
    assert slot.processed == 1
    lanes.flushed()
    assert slot.unflushed() == []
    msg, delivery = _task(9)
    lanes.begin(msg, delivery, 0.0, acks_late=False)  # the lowest free lane is taken again
    assert lanes.lane_of(delivery) == 1 and lanes.lane_running("id9") == 1
    lanes.set_terminate(1, "id9")
    assert lanes.terminate_target(1) == "id9" and lanes.terminate_target(0) is None
    for _, d in (tasks[0], tasks[2], (msg, delivery)):
        lanes.end(d)
    lanes.flushed()
    assert slot.tasks() == [] and lanes.high() == 0  # all free: the parent reads no lane
    msg, delivery = _task(10)
    lanes.begin(msg, delivery, 0.0, acks_late=False)
    lanes.begin(*_task(11), 0.0, acks_late=False)
    assert lanes.terminate_target(1) is None  # a new task in the lane: the old aim is gone
    slot.reset()
    assert slot.tasks() == [] and slot.processed == 0 and slot.total == 4


def test_a_lane_keeps_a_large_message_without_its_bytes():
    slot = SlotTable(1, lanes=1)[0]
    msg, delivery = _task(0, data=b"x" * 4000)
    slot.lanes.begin(msg, delivery, 0.0, acks_late=True)
    (_, _, record), = slot.tasks()
    assert record.task_id == "id0" and record.data is None and record.acks_late
