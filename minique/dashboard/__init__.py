"""The web dashboard (`minique -A proj dashboard`): workers, live tasks, queues, failures, dead letters.

A stdlib HTTP server (no new dependency) with a JSON API behind every page and
static files shipped in `static/`; see server.py for the routes and docs/dashboard.md.
"""
from .server import Dashboard, DashboardServer, serve

__all__ = ["Dashboard", "DashboardServer", "serve"]
