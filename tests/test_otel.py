"""minique.contrib.otel: a chain is one trace, each run the child of its publish, each publish from a
running task the child of that run (spans from a real worker and from this client)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (opentelemetry-sdk) is not installed")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from minique import Minique, chain  # noqa: E402
from minique.contrib.otel import instrument, uninstrument  # noqa: E402
from procs import wait_for  # noqa: E402


@pytest.fixture
def traced_client(redis_url):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrument(tracer_provider=provider)
    app = Minique("client", broker=redis_url)
    yield app, exporter
    uninstrument()
    app.close()


def test_a_chain_is_one_trace_of_sends_and_runs(procs, traced_client, redis_client):
    app, exporter = traced_client
    procs.worker("-c", "1", app="otelapp")
    result = chain(app.signature("otelapp.add", (1, 2)), app.signature("otelapp.add", (10,))).apply_async()
    assert result.get(timeout=10) == 13
    [client_send] = exporter.get_finished_spans()
    assert client_send.name == "send otelapp.add" and client_send.kind.name == "PRODUCER"

    def worker_spans():
        return [json.loads(s) for s in redis_client.lrange("otel:spans", 0, -1)]
    spans = wait_for(lambda: (lambda s: s if len(s) >= 3 else None)(worker_spans()), 10, "the worker's spans")
    by_name = {}
    for s in spans:
        by_name.setdefault((s["name"], s["kind"]), []).append(s)
    runs = by_name[("run otelapp.add", "CONSUMER")]
    [send2] = by_name[("send otelapp.add", "PRODUCER")]
    assert len(runs) == 2
    assert {s["trace"] for s in runs + [send2]} == {client_send.context.trace_id}  # one trace
    [run1] = [r for r in runs if r["parent"] == client_send.context.span_id]  # continues the client's send
    [run2] = [r for r in runs if r is not run1]
    assert send2["parent"] == run1["span"]  # the next step is sent inside the first run
    assert run2["parent"] == send2["span"]  # ...and its run continues that send


def test_a_failed_run_is_an_error_span(procs, traced_client, redis_client):
    app, _ = traced_client
    procs.worker("-c", "1", app="otelapp")
    with pytest.raises(ValueError):
        app.send_task("otelapp.boom", (1,)).get(timeout=10)
    spans = wait_for(lambda: [json.loads(s) for s in redis_client.lrange("otel:spans", 0, -1)
                              if json.loads(s)["name"] == "run otelapp.boom"], 10, "the run's span")
    assert spans[0]["status"] == "ERROR"
