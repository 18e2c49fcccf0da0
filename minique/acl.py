"""Redis ACL rules for least privilege: one Redis user per role (pure: the rules as data).

This module is the one place the rules live: docs/security.md shows them (a test checks it shows
exactly these), tests/test_acl.py gives them to a real redis-server and checks that each role does
its job through minique and is refused what it does not need. Redis 7 or later (selectors).

    producer   sends tasks (also with an ETA), waits for and reads their results, saves groups
    worker     runs tasks: every key under minique:*, the control channel (to listen), no admin commands
    dashboard  reads: events, workers, queue lengths, dead letters, results; writes only its throughput
               counts (minique:throughput, through a script)
    operator   acts: control commands (inspect, ping, revoke, shutdown, rate limits...), dead letters
               (list, replay, purge), purging queues, the dashboard's retry/revoke/replay buttons
    beat       the periodic scheduler: a producer that also holds beat's lease and last-run book

A user may have several roles (the dashboard with actions: dashboard + operator). Print the
command to create a user (for redis-cli, or an ACL file line with --acl-file):

    python -m minique.acl ROLE [ROLE...] --user NAME [--password PW] [--acl-file] [--redis-7.0]

What no role has: KEYS, CONFIG, FLUSHDB/FLUSHALL, DEBUG, MONITOR, ACL, SHUTDOWN, ... (the
@dangerous category), and no key outside `minique:*`. The key patterns follow minique/keys.py;
within a selector `(...)` a command is allowed only on the keys that selector names.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

# What every role's connections do: health checks, SELECT of a db in the URL; and redis-py's CLIENT SETINFO
# on connecting, on Redis 7.2 or later (7.0 has no such command: leave it out there; refused, redis-py goes on,
# but each refusal is an entry in ACL LOG).
CONNECTION = ("+ping", "+select")
SETINFO = "+client|setinfo"

_SEND = (
    "(~minique:{*}:p? +xadd +lpush)",                    # a ready message: its queue at its priority
    "(~minique:{*}:delayed +zadd)",                      # a message with an ETA: the queue's delayed set
)

ROLES: Dict[str, Tuple[str, ...]] = {
    "producer": _SEND + (
        "(~minique:res:* +get +lindex +brpoplpush +del)",  # AsyncResult: state, get() (a blocking wait), forget()
        "(~minique:group:* +set +get +del)",               # GroupResult: save, restore, delete
        "+script|load", "(~minique:unique:* +evalsha +eval)",  # unique tasks: claim a key (unique.py)
        "(~minique:deduplicated +hincrby)",                # ... and count a send that found it taken
    ),
    "worker": (
        "&minique:control", "+subscribe", "+unsubscribe",  # listen for control commands
        "+time", "+script|load",                           # (TIME: inside move_due.lua and the leases' scripts)
        "(~minique:* +@read +@write -@dangerous +evalsha +eval)",
    ),
    "dashboard": (
        "+scan",                                           # which queues exist (SCAN MATCH minique:{*}:*)
        "(%R~minique:* +@read -@dangerous)",               # everything under minique:, read only
        "+script|load",                                    # but its throughput counts (dashboard/state.py)
        "(~minique:throughput +evalsha +eval +hget +hset +hincrby +hkeys +hdel +expire)",
    ),
    "operator": (
        "+scan", "+multi", "+exec", "+discard", "+script|load",
        "+time",                                           # (TIME: inside bring_forward.lua, revoke)
        "&minique:control", "+publish",                    # control commands (workers answer on reply lists)
        "(~minique:reply:* +blpop +del)",                  # the answers to inspect, ping, ...
        "(~minique:revoked +zadd +zremrangebyscore +zrangebyscore)",  # revoke
        "(~minique:workers +hvals)",                       # revoke: the live workers' queues (their delayed sets)
        "(~minique:dlq +xrange +xlen +xdel +del)",         # dead letters: list, replay, purge
        "(~minique:paused +sadd +srem +smembers)",         # pause and resume queues
        # queues: replay and retry send into them; purge empties them (purge.lua reads the group first);
        # revoke finds a delayed task and brings it forward (find_delayed.lua, bring_forward.lua)
        "(~minique:{*}:* +xadd +lpush +xlen +xpending +xinfo|groups +xrange +xdel +llen +zcard +del"
        " +zscan +zadd +evalsha +eval)",
    ),
    "beat": _SEND + (
        "+script|load",
        "(~minique:lock:beat +set +get +del +pttl +pexpire +evalsha +eval)",        # the leader's lease
        "(~minique:beat:last ~minique:beat:lag +hkeys +hdel +hmget +hget +hset +evalsha +eval)",  # last runs, lag
    ),
}


def rules(*roles: str, setinfo: bool = True) -> List[str]:
    """The ACL SETUSER arguments (after the user's name and password) that grant `roles` (`setinfo`:
    Redis 7.2 or later)."""
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise ValueError(f"unknown role(s) {unknown}: choose from {sorted(ROLES)}" if unknown else "no role given")
    # reset (no password, keys, channels, commands, selectors), then on; resetchannels also where the server
    # sets acl-pubsub-default allchannels
    out: List[str] = ["reset", "on", "resetchannels", *CONNECTION, *((SETINFO,) if setinfo else ())]
    for role in roles:
        out += [rule for rule in ROLES[role] if rule not in out]
    return out


def setuser_args(user: str, password: str, *roles: str, setinfo: bool = True) -> List[str]:
    """`ACL SETUSER user ...` as a command's arguments (for client.execute_command(*args))."""
    if not user or any(c.isspace() for c in user):
        raise ValueError(f"a user name without spaces, not {user!r}")
    if any(c.isspace() for c in password):
        raise ValueError("a password without spaces (ACL rules are space-separated)")
    found = rules(*roles, setinfo=setinfo)
    return ["ACL", "SETUSER", user, *found[:2], f">{password}", *found[2:]]


def create_user(client: Any, user: str, password: str, *roles: str) -> None:
    """Create (or reset) `user` on the Redis of `client` (a redis-py client of an admin user); on a Redis
    older than 7.2, without CLIENT SETINFO."""
    try:
        client.execute_command(*setuser_args(user, password, *roles))
    except Exception as exc:  # (redis-py's ResponseError: this module imports no client library)
        if "client|setinfo" not in str(exc).lower():
            raise
        client.execute_command(*setuser_args(user, password, *roles, setinfo=False))


def acl_file_line(user: str, password: str, *roles: str, setinfo: bool = True) -> str:
    """The same user as a line of an ACL file (redis.conf `aclfile`)."""
    return " ".join(["user", *setuser_args(user, password, *roles, setinfo=setinfo)[2:]])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minique.acl", description=__doc__.split("\n\n")[0])
    parser.add_argument("roles", nargs="+", choices=sorted(ROLES), metavar="ROLE", help=", ".join(sorted(ROLES)))
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", default="CHANGE-ME", help="(default: a placeholder to replace)")
    parser.add_argument("--acl-file", action="store_true", help="print a line for an ACL file instead")
    parser.add_argument("--redis-7.0", dest="setinfo", action="store_false",
                        help="for Redis 7.0 and 7.1 (no CLIENT SETINFO)")
    args = parser.parse_args(argv)
    if args.acl_file:
        print(acl_file_line(args.user, args.password, *args.roles, setinfo=args.setinfo))
    else:
        print(" ".join(setuser_args(args.user, args.password, *args.roles, setinfo=args.setinfo)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
