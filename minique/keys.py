"""Every Redis key minique uses is built here; this docstring is the key-space map.

Keys that one script or transaction touches together share a hash tag (the part in
braces) so that the layout already fits Redis Cluster. A queue name is the hash tag of
its keys, so it may not hold `{` or `}` (`check_queue`; the key builders refuse it too).

Broker (broker_url):
    minique:{Q}:p<N>          stream, queue Q at priority N (0..9); fields m=message bytes, d=deliveries
                              (consumer group "minique"). Lists broker: a list with the same name.
    minique:{Q}:delayed       zset, messages for Q with an ETA; score = due time (ms), member = prio digit + message
    minique:{Q}:proc:<C>      list, Lists broker only: messages consumer C holds
    minique:{Q}:consumers     zset, Lists broker only: consumer C -> claim deadline (ms)
    minique:{Q}:conc:<T>[:<K>] zset, task ids running under T's concurrency limit -> lease end (ms);
                              ...:waiting, a list of the parked messages (delayed-set members) waiting for a slot
    minique:dlq               stream, dead letters: m, reason, queue, task_id, worker, time
    minique:revoked           zset, revoked task id -> until when it is kept (epoch s; control.revoke)
    minique:control           pub/sub channel for remote control; replies on minique:reply:<id>
    minique:events            stream, task and worker events (capped)
    minique:workers           hash, worker hostname -> last heartbeat (msgpack)
    minique:lock:<name>       string, short-lived locks (the reaper's, beat's leader lease)
    minique:beat:last         hash, beat entry name -> last run (epoch s)
    minique:rl:<T>[:<K>]      string, the next free start (ms) of task T under its cluster-wide rate limit (per key K)
    minique:deduplicated      hash, task name -> sends a unique task's key turned into its holder's result
    minique:unique:<K>        string, the id of the task holding unique key K (expires after unique_for)
    minique:paused            set, queues no worker takes messages from (pause/resume)
    minique:beat:lag          hash, beat entry name -> seconds its last run was sent after its slot
    minique:throughput        hash, the dashboard's task counts per 10 s: "<epoch s>:s|f|r" -> count
                              (succeeded, failed, retried), "last" -> the last events entry counted
    minique:replay:{ID}:<R>:<D>  string, once-only mark of task ID's retry R, delivery D (replay protection,
                              security_message_max_age): the worker that took it; expires with the window
Result backend (result_backend):
    minique:res:{ID}          string, the task's state and result (msgpack), expires after result_expires
    minique:res:{ID}:ready    list holding one token once the task is ready; waiters block on it
    minique:chord:{CID}       hash, header index -> encoded result of a finished member
    minique:chord:{CID}:done  string, set once the chord's callback was sent (or failed)
    minique:group:{GID}       string, a saved GroupResult (member ids)
"""
from __future__ import annotations

from typing import Any, Optional

from .exceptions import InvalidQueueName

PREFIX = "minique"
GROUP = "minique"           # the consumer group every worker reads through
PRIORITIES = range(10)

DLQ = f"{PREFIX}:dlq"
REVOKED = f"{PREFIX}:revoked"
CONTROL = f"{PREFIX}:control"
EVENTS = f"{PREFIX}:events"
WORKERS = f"{PREFIX}:workers"
BEAT_LAST = f"{PREFIX}:beat:last"
BEAT_LAG = f"{PREFIX}:beat:lag"
PAUSED = f"{PREFIX}:paused"
DEDUPLICATED = f"{PREFIX}:deduplicated"
THROUGHPUT = f"{PREFIX}:throughput"


def unique(key: str) -> str:
    """A unique task's key (unique.py): holds the id of the task that claimed it."""
    return f"{PREFIX}:unique:{key}"


def concurrency(queue: str, task: str, key: Optional[str] = None) -> str:
    """The run slots of a concurrency-limited task (per `key`, if given), hash-tagged with its queue."""
    return f"{PREFIX}:{{{queue}}}:conc:{task}" + (f":{key}" if key is not None else "")


def rate_bucket(task: str, key: Optional[str] = None) -> str:
    """The cluster-wide rate limit of `task` (per `key`, if given): the next free start (ms). One per task
    name, whichever queue its messages come from (a single-key script: any Cluster slot will do)."""
    return f"{PREFIX}:rl:{task}" + (f":{key}" if key is not None else "")


def check_queue(name: Any, where: str = "") -> str:
    """`name` if it can name a queue, else InvalidQueueName saying why (`where`: where it was given)."""
    if type(name) is str and name and "{" not in name and "}" not in name:
        return name
    given = f" (given in {where})" if where else ""
    if not isinstance(name, str):
        why = f"a queue name is a string, not {type(name).__name__}"
    elif not name:
        why = "a queue name cannot be empty"
    else:
        why = ("a queue name cannot contain '{' or '}': it is the hash tag of the queue's Redis keys, "
               "and a brace would change it (the queue's scripts and dead letters would name another queue)")
    raise InvalidQueueName(f"invalid queue name {name!r}{given}: {why}")


def queue(name: str, priority: int = 0) -> str:
    if "{" in name or "}" in name or not name:  # (the send path: check_queue only to say why)
        check_queue(name)
    return f"{PREFIX}:{{{name}}}:p{priority}"


def queue_priorities(name: str) -> list[str]:
    """The queue's keys from highest priority to lowest (the order workers read in)."""
    return [queue(name, p) for p in reversed(PRIORITIES)]


def delayed(name: str) -> str:
    check_queue(name)
    return f"{PREFIX}:{{{name}}}:delayed"


def processing(name: str, consumer: str) -> str:
    check_queue(name)
    return f"{PREFIX}:{{{name}}}:proc:{consumer}"


def consumers(name: str) -> str:
    check_queue(name)
    return f"{PREFIX}:{{{name}}}:consumers"


def queue_name_of(key: str) -> str:
    """The queue name inside a queue key (the hash tag)."""
    return key[key.index("{") + 1:key.index("}")]


def priority_of(key: str) -> int:
    return int(key.rsplit(":p", 1)[1])


def replay_mark(task_id: str, retries: int, deliveries: int) -> str:
    return f"{PREFIX}:replay:{{{task_id}}}:{retries}:{deliveries}"


def result(task_id: str) -> str:
    return f"{PREFIX}:res:{{{task_id}}}"


def ready(task_id: str) -> str:
    return f"{PREFIX}:res:{{{task_id}}}:ready"


def chord(chord_id: str) -> str:
    return f"{PREFIX}:chord:{{{chord_id}}}"


def chord_done(chord_id: str) -> str:
    return f"{PREFIX}:chord:{{{chord_id}}}:done"


def group(group_id: str) -> str:
    return f"{PREFIX}:group:{{{group_id}}}"


def lock(name: str) -> str:
    return f"{PREFIX}:lock:{name}"


def reply(reply_id: str) -> str:
    return f"{PREFIX}:reply:{reply_id}"


# --- Redis Cluster hash slots (the CRC16-XMODEM of the key's hash tag, modulo 16384) ---------------------
SLOTS = 16384


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def hash_slot(key: Any) -> int:
    """The cluster slot of `key` (str or bytes): keys sharing a hash tag (`{...}`) share a slot."""
    raw = key.encode() if isinstance(key, str) else bytes(key)
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1:end]
    crc = 0
    for byte in raw:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc % SLOTS
