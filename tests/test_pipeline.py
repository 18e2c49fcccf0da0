"""The worker's FastPipeline: written now, answered later, nothing lost when the connection drops (real Redis)."""
import pytest
import redis

from minique.worker.execute import Batch, FastPipeline


def test_write_now_read_later_in_order(redis_client):
    pipe = FastPipeline(redis_client)
    pipe.rpush("l", "a")
    pipe.write()
    pipe.rpush("l", "b")
    pipe.write()
    assert len(pipe) == 0
    assert pipe.execute() == [1, 2]  # the replies of everything written so far, in order
    assert redis_client.lrange("l", 0, -1) == [b"a", b"b"]
    assert pipe.execute() == []


def test_reply_handlers_run_and_may_queue_more(redis_client):
    pipe = FastPipeline(redis_client)
    seen = []

    def handler(reply):
        seen.append(reply)
        pipe.set("after", reply)  # queued by the handler: goes with the next write

    pipe.call(handler, "INCR", "n")
    pipe.execute()
    assert seen == [1] and len(pipe) == 1
    pipe.execute()
    assert redis_client.get("after") == b"1"


def test_errors_surface_after_every_handler_ran(redis_client):
    redis_client.set("s", "x")
    pipe = FastPipeline(redis_client)
    seen = []
    pipe.lpush("s", 1)  # WRONGTYPE
    pipe.call(seen.append, "INCR", "n")
    with pytest.raises(redis.exceptions.ResponseError):
        pipe.execute()
    assert seen == [1]
    assert isinstance(pipe.execute(raise_on_error=False), list)


@pytest.mark.fault  # drops a connection
def test_unanswered_commands_are_written_again_after_a_dropped_connection(redis_client):
    pipe = FastPipeline(redis_client)
    pipe.sadd("set", "a")
    pipe.execute()  # connects
    pipe.sadd("set", "b")
    pipe.write()
    redis_client.client_kill_filter(_type="normal", skipme=True)  # drops the pipeline's connection
    pipe.sadd("set", "c")
    with pytest.raises(redis.exceptions.ConnectionError):
        pipe.write()
        pipe.collect()
    assert len(pipe) >= 1  # kept: which of them Redis ran is unknown
    pipe.execute()
    assert redis_client.smembers("set") == {b"a", b"b", b"c"}


def test_batch_flush_settles_what_handlers_queue(redis_client):
    batch = Batch(redis_client, redis_client)
    batch.broker.call(lambda reply: batch.broker.rpush("done", reply), "INCR", "k")
    batch.flush()
    assert redis_client.lrange("done", 0, -1) == [b"1"] and len(batch.broker) == 0


def test_pure_python_packing_matches_redis_py(redis_client):
    from minique.worker.execute import _pack_py
    conn = redis_client.connection_pool.get_connection()
    try:
        for args in [("SET", "k", b"v\r\n", 3), ("ZADD", "z", 1.5, "m"),
                     ("XADD", "s", "MAXLEN", "~", 5000, "*", "b", "é")]:
            assert _pack_py(args) == b"".join(conn.pack_commands([args]))
    finally:
        redis_client.connection_pool.release(conn)
