"""The Redis client test tasks keep their books with (what they saw, when they ran), one per process."""
import os
from typing import Any, Callable

import redis


def store_for(app: Any, **options: Any) -> Callable[[], redis.Redis]:
    """A function giving a client of `app`'s broker, made anew in a forked child (a parent's is not its
    own). `options`: redis-py's (e.g. socket_timeout for waits longer than its default read timeout)."""
    held = {}

    def store() -> redis.Redis:
        client = held.get("client")
        if client is None or held.get("pid") != os.getpid():
            client = held["client"] = redis.Redis.from_url(app.conf.broker_url, **options)
            held["pid"] = os.getpid()
        return client

    return store
