"""OpenTelemetry tracing for minique, built on its signals (`pip install 'minique-tasks[otel]'`).

    from minique.contrib.otel import instrument
    instrument()                      # the global tracer provider; or instrument(tracer_provider=...)

Call it where both clients and workers run it (the module that makes the app). Each publish is a
PRODUCER span (`send <task>`) whose context travels in the message's headers (W3C `traceparent`,
through the configured propagator); each run is a CONSUMER span (`run <task>`) that continues it. A
task sent from a running task (a chain's next step, a subtask) is published inside the run's span, so
a whole canvas is one trace: send → run → send → run. Failures are recorded on the run's span.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, Optional, Tuple

from opentelemetry import context as otel_context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .. import signals

_UID = "minique.contrib.otel"
_CONNECTED = (
    (signals.before_task_publish, "_before_publish"),
    (signals.after_task_publish, "_after_publish"),
    (signals.task_prerun, "_prerun"),
    (signals.task_postrun, "_postrun"),
    (signals.task_failure, "_failure"),
    (signals.task_retry, "_retry"),
)


class Instrumentation:
    """The receivers, and the spans they have open (by task id: a publish until it is sent, a run until
    it ends)."""

    def __init__(self, tracer_provider: Any = None):
        from .. import __version__
        self.tracer = trace.get_tracer("minique", __version__, tracer_provider=tracer_provider)
        self._lock = threading.Lock()
        self._sending: Dict[str, Any] = {}
        self._running: Dict[str, Tuple[Any, Any]] = {}

    def connect(self) -> "Instrumentation":
        for signal, method in _CONNECTED:
            signal.connect(getattr(self, method), weak=False, dispatch_uid=_UID)
        return self

    def disconnect(self) -> None:
        for signal, _ in _CONNECTED:
            signal.disconnect(dispatch_uid=_UID)

    # --- publish ------------------------------------------------------------------------------------
    def _before_publish(self, sender: Any = None, headers: Optional[Dict[str, Any]] = None, routing_key: str = "",
                        **_: Any) -> None:
        if headers is None:
            return
        task_id = headers.get("id")
        span = self.tracer.start_span(f"send {sender}", kind=SpanKind.PRODUCER, attributes={
            "messaging.system": "minique", "messaging.operation.type": "send",
            "messaging.destination.name": routing_key, "messaging.message.id": str(task_id),
            "minique.task.name": str(sender)})
        propagate.inject(headers, context=trace.set_span_in_context(span))  # (travels as the message's headers)
        with self._lock:
            self._sending[str(task_id)] = span

    def _after_publish(self, headers: Optional[Dict[str, Any]] = None, **_: Any) -> None:
        with self._lock:
            span = self._sending.pop(str((headers or {}).get("id")), None)
        if span is not None:
            span.end()

    # --- run ----------------------------------------------------------------------------------------
    def _prerun(self, task_id: Optional[str] = None, task: Any = None, **_: Any) -> None:
        request = getattr(task, "request", None)
        carrier = dict(getattr(request, "headers", None) or {})
        parent = propagate.extract(carrier)
        span = self.tracer.start_span(f"run {getattr(task, 'name', '?')}", context=parent, kind=SpanKind.CONSUMER,
                                      attributes={"messaging.system": "minique", "messaging.operation.type": "process",
                                                  "messaging.message.id": str(task_id),
                                                  "minique.task.name": str(getattr(task, "name", "?")),
                                                  "minique.task.retries": int(getattr(request, "retries", 0) or 0)})
        token = otel_context.attach(trace.set_span_in_context(span))
        with self._lock:
            self._running[str(task_id)] = (span, token)

    def _postrun(self, task_id: Optional[str] = None, state: Optional[str] = None, **_: Any) -> None:
        with self._lock:
            found = self._running.pop(str(task_id), None)
        if found is None:
            return
        span, token = found
        if state:
            span.set_attribute("minique.task.state", str(state))
        try:
            otel_context.detach(token)
        except Exception:  # noqa: BLE001 - detached elsewhere (another thread): the span still ends
            pass
        span.end()

    def _failure(self, task_id: Optional[str] = None, exception: Optional[BaseException] = None, **_: Any) -> None:
        with self._lock:
            found = self._running.get(str(task_id))
        if found is not None and exception is not None:
            found[0].record_exception(exception)
            found[0].set_status(Status(StatusCode.ERROR, type(exception).__name__))

    def _retry(self, request: Any = None, reason: Any = None, **_: Any) -> None:
        with self._lock:
            found = self._running.get(str(getattr(request, "id", None)))
        if found is not None:
            found[0].add_event("retry", {"reason": str(reason)[:200]})


_installed: Optional[Instrumentation] = None


def instrument(tracer_provider: Any = None) -> Instrumentation:
    """Trace publishes and runs in this process (once: a second call replaces the first)."""
    global _installed
    uninstrument()
    _installed = Instrumentation(tracer_provider).connect()
    return _installed


def uninstrument() -> None:
    global _installed
    if _installed is not None:
        _installed.disconnect()
        _installed = None
