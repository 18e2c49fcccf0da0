"""The asyncio client (minique/aio.py): adelay/aapply_async/aget, canvas aapply_async, many coroutines at
once, several event loops, timeouts, eager mode, unique tasks and publish signals, through real workers."""
import asyncio
import json
import threading

import pytest

from minique import chain, chord, exceptions, group, signals, states
from minique.aio import _Staged
from minique.result import EagerResult


def _run(coro, timeout=30.0):
    """asyncio.run with debug on and a bound (a hung await fails the test rather than pytest-timeout)."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded(), debug=True)


def test_adelay_aapply_async_and_aget(procs, client_app):
    procs.worker("-c", "1", "-P", "threads")
    add, app = client_app.add, client_app.app

    async def main():
        r1 = await add.adelay(2, 3)
        r2 = await add.aapply_async((4, 5), countdown=0.2)
        r3 = await app.asend_task("testapp.add", (1, 1))
        got = [await r1.aget(timeout=10), await r2.aget(timeout=10), await r3.aget(timeout=10)]
        states_now = [await r.astate() for r in (r1, r2, r3)]
        return got, states_now, await r1.aready(), await r1.asuccessful()

    got, states_now, ready, ok = _run(main())
    assert got == [5, 9, 2]
    assert states_now == [states.SUCCESS] * 3 and ready and ok


def test_aget_reraises_the_task_exception_and_times_out(procs, client_app):
    procs.worker("-c", "1", "-P", "threads")

    async def main():
        failing = await client_app.fail.adelay("nope")
        with pytest.raises(ValueError, match="nope"):
            await failing.aget(timeout=10)
        assert await failing.afailed()
        parked = await client_app.add.aapply_async((1, 2), queue="nobody")  # no worker reads this queue
        with pytest.raises(exceptions.TimeoutError):
            await parked.aget(timeout=0.3)
        assert await parked.astate() == states.PENDING
        return True

    assert _run(main())


def test_canvas_aapply_async(procs, client_app):
    procs.worker("-c", "2", "-P", "threads")
    add, tsum = client_app.add, client_app.tsum

    async def main():
        g = await group(add.s(i, i) for i in range(5)).aapply_async()
        c = await chain(add.s(1, 2), add.s(3), add.s(4)).aapply_async()
        ch = await chord([add.s(i, 1) for i in range(4)], tsum.s()).aapply_async()
        return await g.aget(timeout=10), await c.aget(timeout=10), await ch.aget(timeout=10)

    assert _run(main()) == ([0, 2, 4, 6, 8], 10, 10)


def test_a_thousand_concurrent_adelays(procs, client_app):
    procs.worker("-c", "2", "-P", "threads")
    add = client_app.add

    async def main():
        results = await asyncio.gather(*(add.adelay(i, 1) for i in range(1000)))
        values = await asyncio.gather(*(r.aget(timeout=30) for r in results))
        return [r.id for r in results], values

    ids, values = _run(main(), timeout=50)
    assert values == [i + 1 for i in range(1000)]
    assert len(set(ids)) == 1000


def test_two_event_loops_in_two_threads_share_one_app(procs, client_app):
    procs.worker("-c", "2", "-P", "threads")
    add, app = client_app.add, client_app.app
    out, errors = {}, []
    barrier = threading.Barrier(2, timeout=20)

    def thread(n):
        async def main():
            barrier.wait()  # both loops send at once (a blocking wait, but before anything is scheduled)
            results = await asyncio.gather(*(add.adelay(n, i) for i in range(50)))
            values = [await r.aget(timeout=20) for r in results]
            return values, id(await app.aio.clients())
        try:
            out[n] = _run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=thread, args=(n,)) for n in (100, 200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not errors, errors
    assert out[100][0] == [100 + i for i in range(50)] and out[200][0] == [200 + i for i in range(50)]
    assert out[100][1] != out[200][1]  # each loop its own connections
    assert not app.aio._by_loop  # each loop's clients closed and forgotten when its asyncio.run ended


def test_aclose_and_reuse_after(procs, client_app):
    procs.worker("-c", "1", "-P", "threads")
    app, add = client_app.app, client_app.add

    async def main():
        first = await app.aio.clients()
        assert await (await add.adelay(1, 1)).aget(timeout=10) == 2
        await app.aclose()
        assert first.closed and not app.aio._by_loop
        assert await (await add.adelay(2, 2)).aget(timeout=10) == 4  # new connections on the next use
        return (await app.aio.clients()) is not first

    assert _run(main())


def test_eager_mode_runs_adelay_here(client_app):
    app, add = client_app.app, client_app.add
    app.conf.task_always_eager = True
    try:
        async def main():
            r = await add.adelay(20, 22)
            g = await group(add.s(1, 1), add.s(2, 2)).aapply_async()
            return r, await r.aget(), await r.astate(), await g.aget()
        r, value, state, gvalues = _run(main())
    finally:
        app.conf.task_always_eager = False
    assert isinstance(r, EagerResult) and value == 42 and state == states.SUCCESS and gvalues == [2, 4]


def test_unique_tasks_and_rate_limit_key_headers_as_in_the_sync_path(client_app, redis_client):
    app = client_app.app

    async def main():
        first = await app.asend_task("testapp.add", (1, 2), unique_key="k1", queue="nobody")
        second = await app.asend_task("testapp.add", (1, 2), unique_key="k1", queue="nobody")
        keyed = await app.asend_task("testapp.add", (3, 4), queue="nobody", rate_limit_key="tenant-7")
        return first, second, keyed

    first, second, keyed = _run(main())
    assert second.id == first.id  # the holder's result
    from minique import keys
    from minique.message import decode
    entries = redis_client.xrange(keys.queue("nobody", 0))
    assert len(entries) == 2  # the second unique send sent nothing
    msgs = [decode(fields[b"m"]) for _, fields in entries]
    assert msgs[0].headers["unique_key"] == "k1"
    assert msgs[1].id == keyed.id and msgs[1].headers["rate_limit_key"] == "tenant-7"
    sync_dup = app.send_task("testapp.add", (1, 2), unique_key="k1", queue="nobody")
    assert sync_dup.id == first.id  # the sync client sees the async client's claim


def test_publish_signals_in_order_around_the_send(client_app, redis_client):
    app = client_app.app
    seen = []

    def before(sender=None, headers=None, **kw):
        seen.append(("before", sender, None))
        headers["tenant"] = "t1"

    def after(sender=None, headers=None, **kw):
        seen.append(("after", sender, headers["id"]))

    signals.before_task_publish.connect(before)
    signals.after_task_publish.connect(after)
    try:
        async def main():
            return await app.asend_task("testapp.add", (1, 2), queue="nobody")
        r = _run(main())
    finally:
        signals.before_task_publish.disconnect(before)
        signals.after_task_publish.disconnect(after)
    assert [s[0] for s in seen] == ["before", "after"] and seen[1][2] == r.id
    from minique import keys
    from minique.message import decode
    (_, fields), = redis_client.xrange(keys.queue("nobody", 0))
    assert decode(fields[b"m"]).headers == {"tenant": "t1"}


@pytest.mark.unit
def test_staged_records_the_brokers_own_commands():
    from minique.brokers.lists import ListsBroker
    from minique.brokers.streams import StreamsBroker
    staged = _Staged()
    StreamsBroker(None).send(staged, "q", 3, b"data")
    ListsBroker(None).send(staged, "q", 3, b"data")
    StreamsBroker(None).send_later(staged, "q", 3, b"data", 12.0001)
    assert staged.commands[0] == ("XADD", "minique:{q}:p3", "*", "m", b"data")
    assert staged.commands[1][0] == "LPUSH" and staged.commands[1][2] == bytes((0, 3)) + b"data"
    assert staged.commands[2][0] == "ZADD" and staged.commands[2][2] == 12001


@pytest.mark.integration  # starts an embedded redis-server
def test_the_embedded_url_works(tmp_path):
    from minique import Minique, embedded, keys
    from minique.message import decode
    directory = tmp_path / "emb"
    app = Minique("aioemb", broker=f"redis+embedded://{directory}", set_as_current=False)
    try:
        async def main():
            sent = await app.asend_task("aioemb.anything", (1, 2))
            app.backend.mark(sent.id, states.SUCCESS, 7)  # (as a worker would, through the sync client)
            return sent, await sent.aget(timeout=5)
        sent, value = _run(main())
        assert value == 7
        (_, fields), = app.broker_client.xrange(keys.queue("default", 0))
        assert decode(fields[b"m"]).id == sent.id
    finally:
        app.close()
        embedded.stop(directory, timeout=5)


def test_the_lists_broker(procs, client_app):
    settings = '{"broker_transport_options": {"queue_type": "lists"}}'
    procs.worker("-c", "1", "-P", "threads", settings=settings)
    client_app.app.conf.broker_transport_options = {"queue_type": "lists"}

    async def main():
        results = await asyncio.gather(*(client_app.add.adelay(i, i) for i in range(20)),
                                       client_app.add.aapply_async((5, 5), countdown=0.1))
        return [await r.aget(timeout=10) for r in results]

    assert _run(main()) == [2 * i for i in range(20)] + [10]


def test_first_use_from_many_coroutines_makes_one_set_of_connections(client_app):
    app = client_app.app

    async def main():
        found = await asyncio.gather(*(app.aio.clients() for _ in range(50)))
        return {id(c) for c in found}

    assert len(_run(main())) == 1


def test_sends_survive_a_redis_restart(fresh_app, fresh_redis):
    """The shared send connection dies with the server: the next send reconnects and nothing is lost."""
    app, add = fresh_app.app, fresh_app.add

    async def main():
        first = await add.aapply_async((1, 1), queue="nobody")
        writer = (await app.aio.clients()).sender.conn._writer
        fresh_redis.restart()  # (here, not in a thread: the server dies with the thread that started it)
        after = await asyncio.gather(*(add.aapply_async((i, i), queue="nobody") for i in range(10)))
        assert (await app.aio.clients()).sender.conn._writer is not writer  # connected again
        return [first, *after]

    sent = _run(main())
    from minique import keys
    from minique.message import decode
    ids = {decode(fields[b"m"]).id for _, fields in fresh_redis.client(0).xrange(keys.queue("nobody", 0))}
    assert {r.id for r in sent} <= ids  # (AOF: the first survives the restart; a resent one may appear twice)


def test_a_separate_result_backend(procs, client_app, redis_url):
    backend = redis_url.rsplit("/", 1)[0] + "/1"
    procs.worker("-c", "1", "-P", "threads", settings=json.dumps({"result_backend": backend}))
    app = client_app.app
    app.conf.result_backend = backend

    async def main():
        r = await client_app.add.adelay(20, 1)
        clients = await app.aio.clients()
        return await r.aget(timeout=10), clients.backend is not clients.broker

    assert _run(main()) == (21, True)
