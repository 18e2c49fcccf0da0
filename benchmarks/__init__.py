"""minique's benchmark runner (issue #7): `python -m benchmarks`.

Measures minique and Celery side by side against one private redis-server and
prints every figure with the ratio minique/Celery. See docs/benchmarks.md.
"""
