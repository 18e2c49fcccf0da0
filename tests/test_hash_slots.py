"""keys.hash_slot (Redis Cluster's CRC16 slots) and the recorder's cross-slot check (tests/monitor.py)."""
from __future__ import annotations

import random

from redis.crc import key_slot

from minique import keys
from monitor import slot_problems


def test_hash_slot_agrees_with_redis_py():
    rng = random.Random(7)
    samples = [b"foo", b"{}", b"{}x", b"a{b}c", b"{", b"}{x}", b"x{}{y}", b"minique:dlq", "é{ü}".encode()]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20))) for _ in range(2000)]
    for key in samples:
        assert keys.hash_slot(key) == key_slot(key), key


def test_a_queues_keys_share_its_slot_and_a_tasks_result_keys_theirs():
    q = keys.hash_slot(keys.queue("default"))
    assert {keys.hash_slot(k) for k in keys.queue_priorities("default")} == {q}
    assert keys.hash_slot(keys.delayed("default")) == keys.hash_slot(keys.processing("default", "c")) == q
    assert keys.hash_slot(keys.result("t1")) == keys.hash_slot(keys.ready("t1"))
    assert keys.hash_slot(keys.chord("c1")) == keys.hash_slot(keys.chord_done("c1"))


def test_the_recorder_check_flags_cross_slot_scripts_transactions_and_commands():
    a, b = keys.queue("default"), keys.queue("priority_high")
    assert keys.hash_slot(a) != keys.hash_slot(b)
    ok = [("c1", [b"EVALSHA", b"sha", b"2", a.encode(), keys.delayed("default").encode(), b"arg"]),
          ("c1", [b"MULTI"]), ("c1", [b"XADD", a.encode(), b"*"]), ("c1", [b"EXEC"]),
          ("lua", [b"DEL", a.encode(), b.encode()]),  # inside a script: the script's keys count
          ("c1", [b"XREADGROUP", b"GROUP", b"g", b"c", b"STREAMS", a.encode(), b">"])]
    assert slot_problems(ok) == []
    bad = [("c1", [b"EVALSHA", b"sha", b"2", a.encode(), b.encode()]),
           ("c2", [b"MULTI"]), ("c2", [b"XADD", a.encode(), b"*"]), ("c3", [b"XDEL", b.encode(), b"1"]),
           ("c2", [b"XDEL", b.encode(), b"1-0"]), ("c2", [b"EXEC"]),
           ("c1", [b"DEL", a.encode(), b.encode()]),
           ("c1", [b"XREADGROUP", b"GROUP", b"g", b"c", b"STREAMS", a.encode(), b.encode(), b">", b">"])]
    assert len(slot_problems(bad)) == 4
