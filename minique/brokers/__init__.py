"""Brokers: where messages wait. `make_broker` picks the implementation from the settings."""
from __future__ import annotations

from typing import Any, Dict

from .base import Broker, Delivery
from .lists import ListsBroker
from .streams import StreamsBroker

KINDS = {"streams": StreamsBroker, "lists": ListsBroker}


def make_broker(client: Any, transport_options: Dict[str, Any], max_deliveries: int) -> Broker:
    """The broker named by broker_transport_options["queue_type"] (default "streams")."""
    kind = transport_options.get("queue_type", "streams")
    if kind not in KINDS:
        from ..exceptions import ConfigurationError
        raise ConfigurationError(f"unknown queue_type {kind!r} in broker_transport_options; use one of {sorted(KINDS)}")
    replicas = transport_options.get("wait_for_replicas", 0)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        from ..exceptions import ConfigurationError
        raise ConfigurationError(f"wait_for_replicas in broker_transport_options must be a whole number >= 0, "
                                 f"not {replicas!r}")
    return KINDS[kind](client, visibility_timeout=float(transport_options.get("visibility_timeout", 3600)),
                       max_deliveries=int(transport_options.get("max_deliveries", max_deliveries)),
                       wait_for_replicas=replicas, wait_timeout=float(transport_options.get("wait_timeout", 1.0)))


__all__ = ["Broker", "Delivery", "StreamsBroker", "ListsBroker", "make_broker"]
