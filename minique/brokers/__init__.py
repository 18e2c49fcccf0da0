"""Brokers: where messages wait. `make_broker` picks the implementation from the settings."""
from __future__ import annotations

from typing import Any

from .base import Broker, Delivery
from .lists import ListsBroker
from .streams import StreamsBroker

KINDS = {"streams": StreamsBroker, "lists": ListsBroker}


def make_broker(client: Any, transport_options: dict, max_deliveries: int) -> Broker:
    """The broker named by broker_transport_options["queue_type"] (default "streams")."""
    kind = transport_options.get("queue_type", "streams")
    if kind not in KINDS:
        from ..exceptions import ConfigurationError
        raise ConfigurationError(f"unknown queue_type {kind!r} in broker_transport_options; use one of {sorted(KINDS)}")
    return KINDS[kind](client, visibility_timeout=float(transport_options.get("visibility_timeout", 3600)),
                       max_deliveries=int(transport_options.get("max_deliveries", max_deliveries)))


__all__ = ["Broker", "Delivery", "StreamsBroker", "ListsBroker", "make_broker"]
