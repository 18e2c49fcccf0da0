"""An exception class that only a worker running testapp.fail_with_own_class imports.

Importing this module leaves a mark in the environment variable named by TESTAPP_ERRORS_MARK (if set)
and a file of that name, so a test can tell whether a client imported it."""
import os

_mark = os.environ.get("TESTAPP_ERRORS_MARK")
if _mark:
    with open(_mark, "a") as f:
        f.write(f"imported in {os.getpid()}\n")


class OwnError(Exception):
    pass
