"""Workers on several hosts, one of them cut off from Redis longer than visibility_timeout.

Redis and two CLI workers, A and B, run in three network namespaces on one Linux bridge
(tests/netns.py; the test process reaches Redis through the bridge's own address). B takes eight
messages, starts two long ones, and is cut off: its link is set down at the bridge, so its packets are
dropped both ways and its connections stall without being reset, as when a host's switch port or cable
fails. A comes up meanwhile; its reaper redelivers what B held once B has not renewed it for
visibility_timeout, and A runs it. Then B is joined again, and its stalled writes go through.

What B held when cut off, and what is asserted (tasks keep books in Redis, testapp.book: a line per
execution when its body starts, with the pid and delivery count, and one when it ends):

* running, LONG seconds each (their bodies end during the partition; their writes wait for the heal):
  - `late-run`, acks-late: it was cut off, so it is redelivered and runs again: exactly twice, started
    on B (delivery 0) and on A (delivery 1); both runs end.
  - `early-run`, early ack (acked before its body ran): never redelivered; exactly once, on B; its
    result is written by B after the heal.
* fetched and not started (each of B's two processes fetches four at once and runs the first):
  `early-1..4` (early ack, not acked yet: acked when they start) and `late-1..2` (acks-late): each
  redelivered and run exactly once, on A (delivery 1). B, healed, finds them no longer its own and
  drops them instead of running them (its log says so: 6 dropped).

So: every task ends SUCCESS with its token as its result, readable by the client; no early-ack task
runs twice; the one acks-late task that runs twice is the one B was running when cut off.
"""
from __future__ import annotations

import json
import re
import time
from typing import Dict

import pytest
import redis

import netns
from minique import keys
from procs import Books, Processes, drop_testapp, import_testapp, report, wait_for
from redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

VISIBILITY = 3.0    # seconds: both workers' visibility_timeout (small: the test waits for it to pass)
LONG = 3.0          # seconds: the bodies B is running when it is cut off
REDIS_PORT = 7379   # in Redis's own namespace: nothing else listens there
KEY = "partition"   # the books' key
SETTINGS = json.dumps({"broker_transport_options": {"visibility_timeout": VISIBILITY}})
LATE, EARLY = "testapp.book_durable_late", "testapp.book_durable"  # (their books survive a stalled link)

# Sent in this order before B starts: each of B's two pool processes fetches four (prefetch multiplier
# 4), runs the first (long) and holds the other three. Which process takes which four does not matter.
MESSAGES = (
    (LATE, "late-run", LONG), (EARLY, "early-1", 0), (EARLY, "early-2", 0), (LATE, "late-1", 0),
    (EARLY, "early-run", LONG), (EARLY, "early-3", 0), (EARLY, "early-4", 0), (LATE, "late-2", 0),
)
RUNNING = ("late-run", "early-run")
HELD = tuple(token for _, token, _ in MESSAGES if token not in RUNNING)


class Site:
    """The network, Redis in its namespace, and the namespaces of workers A and B."""

    def __init__(self, net: netns.Network, server: RedisServer, a: netns.Host, b: netns.Host):
        self.net, self.server, self.a, self.b = net, server, a, b


@pytest.fixture
def site(tmp_path):
    why = netns.unavailable()
    if why:
        pytest.skip(why)
    netns.sweep()  # what runs killed before their teardown left
    net = netns.Network()
    server = None
    try:
        where = net.add("redis")
        a, b = net.add("a"), net.add("b")
        server = RedisServer(tmp_path / "redis", host=where.address, port=REDIS_PORT, prefix=where.prefix(),
                             extra_args=("--protected-mode", "no"))
        server.start()
        for host in (a, b):
            error = host.can_connect(where.address, REDIS_PORT)
            if error:
                pytest.skip(f"namespace {host.name} cannot reach Redis in {where.name} over the bridge "
                            f"(bridged traffic filtered by the firewall?): {error}")
        yield Site(net, server, a, b)
    finally:
        if server is not None:
            server.kill()
        net.close()


@pytest.fixture
def workers(tmp_path, site):
    procs = Processes(tmp_path, site.server.url())
    yield procs
    procs.close()


@pytest.fixture
def app(site, monkeypatch):
    testapp = import_testapp(monkeypatch, site.server.url())
    yield testapp.app
    drop_testapp(testapp)


def held(client: redis.Redis) -> Dict[str, int]:
    """Messages of the default queue delivered and not acked, by the hostname of the worker holding them."""
    out: Dict[str, int] = {}
    for key in keys.queue_priorities("default"):
        try:
            info = client.xpending(key, keys.GROUP)
        except redis.exceptions.ResponseError:  # (no group on a priority never used)
            continue
        for consumer in info.get("consumers") or ():
            name = consumer["name"]
            host = (name.decode() if isinstance(name, bytes) else name).split(":")[0]
            out[host] = out.get(host, 0) + int(consumer["pending"])
    return {host: n for host, n in out.items() if n}


def waiting(client: redis.Redis, address: str) -> int:
    """Connections from `address` blocked in XREADGROUP: pool processes with nothing in hand (a process
    blocks only with its buffer empty and its writes answered)."""
    return sum(1 for c in client.client_list()
               if c["addr"].rsplit(":", 1)[0] == address and c.get("cmd") == "xreadgroup" and "b" in c.get("flags", ""))


def test_a_worker_cut_off_longer_than_the_visibility_timeout(site, workers, app):
    client = site.server.client()
    results = {token: app.send_task(name, (KEY, token, seconds)) for name, token, seconds in MESSAGES}
    books = Books(client, KEY, list(results))

    b = workers.worker("-c", "2", settings=SETTINGS, prefix=site.b.prefix())
    wait_for(lambda: len({t for t, _, _ in books.starts()}) == 2 and held(client) == {b.hostname: 7}, 30,
             "B to start two messages and hold the other six (the early-ack one it runs is acked: 7 held)")
    assert {t for t, _, _ in books.starts()} == set(RUNNING)
    b_pids = set(b.children())

    site.net.cut(site.b)
    cut_at = time.monotonic()
    a = workers.worker("-c", "2", settings=SETTINGS, prefix=site.a.prefix())

    def redelivered() -> bool:  # A has started all B held (late-run again) and finished the short ones
        started_on_a = {t for t, pid, _ in books.starts() if pid not in b_pids}
        return started_on_a >= {"late-run", *HELD} and set(books.done()) >= set(HELD)
    wait_for(redelivered, 30, "A to run the messages B held")
    redelivered_after = time.monotonic() - cut_at
    assert redelivered_after > VISIBILITY  # (nothing of B's could be taken from it sooner)
    site.net.heal(site.b)
    healed_at = time.monotonic()

    # no result lost: every task SUCCESS, its token its result (early-run's is written by B, healed)
    assert {token: r.get(timeout=30) for token, r in results.items()} == {t: t for t in results}
    assert {r.state for r in results.values()} == {"SUCCESS"}
    results_after_heal = time.monotonic() - healed_at

    # both workers idle (every pool process waiting for messages: nothing in hand, its writes answered)
    # and nothing held: from here no run can start or end, so the books are final
    wait_for(lambda: waiting(client, site.a.address) >= 2 and waiting(client, site.b.address) >= 2
             and not held(client), 30, "both workers idle with nothing held")
    a_pids = set(a.children())

    runs: Dict[str, list] = {}  # token -> [(worker, delivery count)] in the order the runs started
    for token, pid, deliveries in books.starts():
        runs.setdefault(token, []).append(("B" if pid in b_pids else "A" if pid in a_pids else pid, deliveries))
    expected = {"late-run": [("B", 0), ("A", 1)], "early-run": [("B", 0)], **{t: [("A", 1)] for t in HELD}}
    logs = f"\n--- B ---\n{b.log()}\n--- A ---\n{a.log()}"
    assert runs == expected, logs
    assert books.done() == {t: 2 if t == "late-run" else 1 for t in results}, logs  # every run ended
    dropped = sum(int(n) for n in re.findall(r"dropped (\d+) fetched message", b.log()))
    assert dropped == len(HELD), logs  # B still had them in hand when healed, and let them go
    report("partition", visibility_timeout=VISIBILITY, redelivered_after=round(redelivered_after, 2),
           results_after_heal=round(results_after_heal, 2), partition=round(healed_at - cut_at, 2),
           record_rewrites=books.rewrites())
    client.close()



@pytest.mark.parametrize("pool", ["prefork", "asyncio"])
def test_a_fetch_reply_held_up_by_the_partition_is_not_run_on_heal(site, workers, app, pool):
    """B's three pool processes wait for messages (a blocking XREADGROUP each, a second long) when B is
    cut off. Redis, which cannot know B is gone, hands the messages sent right after to those reads:
    they are B's (pending, unrenewed) and the replies stall in the network. A redelivers them after
    visibility_timeout and runs them. When B heals the replies arrive, late: B must not run them.

    (Before the fix B ran both again, the early-ack one included: a fetched message's age counted from
    when its reply arrived, so these looked fresh and were not looked up; it counts from when the fetch
    was sent now. The asyncio pool's processes wait in a thread each, and drop such replies alike.)"""
    client = site.server.client()
    b = workers.worker("-c", "3", "-P", pool, settings=SETTINGS, prefix=site.b.prefix())
    wait_for(lambda: waiting(client, site.b.address) >= 3, 20, "B's three processes to wait for messages")
    site.net.cut(site.b)
    cut_at = time.monotonic()
    results = {token: app.send_task(name, (KEY, token, 0)) for name, token in ((EARLY, "early-x"), (LATE, "late-x"))}
    books = Books(client, KEY, list(results))
    # Each message goes to one of B's reads still waiting in Redis (the first to early-x); a read ends
    # after a second, and these were sent milliseconds after the cut: all three reads had to end within
    # those milliseconds for early-x not to reach B (then the test would not show what it is for).
    took = held(client).get(b.hostname, 0)
    assert took >= 1, "no read of B's was waiting in Redis when the messages were sent"
    a = workers.worker("-c", "2", settings=SETTINGS, prefix=site.a.prefix())
    wait_for(lambda: set(books.done()) >= set(results), 30, "A to run the messages B's reads took")
    site.net.heal(site.b)
    healed_at = time.monotonic()

    assert {token: r.get(timeout=30) for token, r in results.items()} == {t: t for t in results}
    wait_for(lambda: waiting(client, site.a.address) >= 2 and waiting(client, site.b.address) >= 3
             and not held(client), 30, "both workers idle with nothing held")
    a_pids = set(a.children())
    runs: Dict[str, list] = {}
    for token, pid, deliveries in books.starts():
        runs.setdefault(token, []).append(("A" if pid in a_pids else "B", deliveries))
    # (one that no read of B's took was in the queue, delivered to A for the first time: delivery 0)
    expected = {"early-x": [("A", 1)], "late-x": [("A", 1 if took == 2 else 0)]}
    logs = f"\n--- B ---\n{b.log()}\n--- A ---\n{a.log()}"
    assert runs == expected, logs  # each ran once, on A
    assert books.done() == {t: 1 for t in results}, logs
    assert "redelivered elsewhere" in b.log(), logs  # B had them in hand after the heal, and let them go
    report("partition_fetch_reply", visibility_timeout=VISIBILITY, partition=round(healed_at - cut_at, 2),
           taken_by_stalled_reads=took, record_rewrites=books.rewrites())
    client.close()
