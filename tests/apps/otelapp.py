"""Tasks traced with minique.contrib.otel, for tests/test_otel.py. The worker's spans go to the SDK's
in-memory exporter and, as each ends, to the Redis list `otel:spans` (the test reads them there)."""
import json
import os

import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from minique import Minique
from minique.contrib.otel import instrument

app = Minique("otelapp", include=["otelapp"])
exporter = InMemorySpanExporter()


class ToRedis(SimpleSpanProcessor):
    """After the in-memory exporter has a span, a copy goes to Redis (the test runs in another process)."""

    def on_end(self, span):
        super().on_end(span)
        parent = span.parent.span_id if span.parent is not None else None
        redis.Redis.from_url(app.conf.broker_url).rpush("otel:spans", json.dumps({
            "name": span.name, "kind": span.kind.name, "trace": span.context.trace_id,
            "span": span.context.span_id, "parent": parent, "status": span.status.status_code.name,
            "pid": os.getpid()}))


provider = TracerProvider()
provider.add_span_processor(ToRedis(exporter))
instrument(tracer_provider=provider)


@app.task
def add(x, y):
    return x + y


@app.task
def boom(x):
    raise ValueError(f"boom {x}")
