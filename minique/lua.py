"""Loads the .lua scripts that sit next to a module, registers them once, calls them by SHA."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Sequence

import redis

if TYPE_CHECKING:
    from .pipe import Pipe


class Scripts:
    """The scripts in one folder, by file stem. Call with a client or a pipeline."""

    def __init__(self, folder: Path):
        self.sources: Dict[str, str] = {p.stem: p.read_text() for p in sorted(Path(folder).glob("*.lua"))}
        self.shas = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in self.sources.items()}

    def load(self, client: "redis.Redis") -> None:
        """SCRIPT LOAD every script (after connecting, and again after a server restart)."""
        pipe = client.pipeline(transaction=False)
        for src in self.sources.values():
            pipe.script_load(src)
        pipe.execute()

    def __call__(self, client: Any, name: str, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        """EVALSHA `name`; on a client (not a pipeline) a missing script is loaded and retried."""
        try:
            return client.evalsha(self.shas[name], len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(self.sources[name])
            return client.evalsha(self.shas[name], len(keys), *keys, *args)

    def queue(self, pipe: "Pipe", name: str, keys: Sequence[Any], args: Sequence[Any],
              on_reply: Callable[[Any], None]) -> None:
        """EVALSHA `name` in a pipe, its reply (or error) handed to `on_reply` when read; a server that
        lost its scripts (a restart) gets it again as EVAL, which also loads it for later calls."""
        script_args = (len(keys), *keys, *args)

        def reply(raw: Any) -> None:
            if isinstance(raw, redis.exceptions.NoScriptError):
                pipe.call(on_reply, "EVAL", self.sources[name], *script_args)
            else:
                on_reply(raw)

        pipe.call(reply, "EVALSHA", self.shas[name], *script_args)


def logged(log: Any, what: str) -> Callable[[Any], None]:
    """An `on_reply` for `Scripts.queue` whose failure is not the caller's: an error reply is logged
    (`could not <what>`), never raised into the write that carried it."""
    def on_reply(reply: Any) -> None:
        if isinstance(reply, Exception):
            log.warning("could not %s: %s", what, reply)
    return on_reply
