"""The worker: a parent that supervises a pool of consumers (see main.Worker)."""
from .main import Worker

__all__ = ["Worker"]
