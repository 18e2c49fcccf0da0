"""minique: a Redis-native task queue with Celery's API and semantics."""
__version__ = "0.1.0"
