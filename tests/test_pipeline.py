"""The worker's FastPipeline: written now, answered later, nothing lost when the connection drops (real Redis)."""
import pytest
import redis

from minique.pipe import FastPipeline
from minique.worker.outbox import Outbox


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


def test_reconnect_leaves_the_connection_and_writes_the_unanswered_again(redis_client):
    """A Sentinel master moved (worker/follow.py): the pipe leaves its connection at once, and what it
    wrote without reading the replies yet is written again on the next one, the replies in order."""
    pipe = FastPipeline(redis_client)
    pipe.execute_command("CLIENT", "ID")
    (first,) = pipe.execute()
    pipe.sadd("set", "a")
    pipe.write()
    pipe.reconnect()
    pipe.execute_command("CLIENT", "ID")
    pipe.sadd("set", "b")
    again, second, added = pipe.execute()
    assert again in (0, 1) and second != first and added == 1  # (SADD a ran once or twice: the same set)
    assert redis_client.smembers("set") == {b"a", b"b"}


def test_outbox_flush_settles_what_handlers_queue(redis_client, redis_url):
    from minique import Minique
    app = Minique("t", broker=redis_url, backend=redis_url)
    outbox = Outbox(app, "c", ["q"], use_alarm=False)
    outbox.broker.call(lambda reply: outbox.broker.execute_command("RPUSH", "done", reply), "INCR", "k")
    outbox.flush()
    assert redis_client.lrange("done", 0, -1) == [b"1"] and len(outbox.broker) == 0
    app.close()


def test_rollback_takes_back_what_was_queued_after_the_mark(redis_client):
    pipe = FastPipeline(redis_client)
    pipe.execute_command("SET", "kept", 1)
    mark = pipe.mark()
    pipe.execute_command("SET", "dropped", 1)
    pipe.call(print, "GET", "dropped")
    pipe.rollback(mark)
    assert [args for args, _ in pipe.command_stack] == [("SET", "kept", 1)]
    pipe.execute()
    assert redis_client.get("kept") == b"1" and redis_client.get("dropped") is None


def test_a_write_no_replica_confirms_is_kept_and_written_again(redis_client):
    """confirm(1, ...) on a server without replicas: each write ends with a WAIT that 0 replicas answer, so
    the write counts as refused (it could be lost in a failover) and stays queued to be written again;
    confirmed by nobody, it is never taken as done. Without confirm, the same write is simply done."""
    pipe = FastPipeline(redis_client)
    pipe.confirm(1, 0.01)
    pipe.set("a", "1")
    pipe.call(lambda reply: None, "INCR", "n")
    with pytest.raises(redis.exceptions.ConnectionError, match="only 0 replica"):
        pipe.execute()
    assert len(pipe) == 2  # both kept (not their WAIT: the next write ends with its own)
    with pytest.raises(redis.exceptions.ConnectionError, match="only 0 replica"):
        pipe.execute()
    assert redis_client.get("n") == b"2"  # (written twice: what a refused write may cost, never a loss)
    pipe.confirm(0, 0.01)
    assert pipe.execute() == [b"OK", 3] and len(pipe) == 0
