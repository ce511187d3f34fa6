"""The scorer's Lua scripts: ``scorer_worker/lua/<name>.lua``, read once, registered once.

redis-py's :class:`~redis.commands.core.Script` keeps the script's SHA and runs it with
EVALSHA (loading it again if the server lost it). One object per client and script, made
on first use, so a hot path does not rebuild it (and hash its text) on every call.
"""

from __future__ import annotations

import functools
import weakref
from pathlib import Path
from typing import Any

LUA_DIR = Path(__file__).with_name("lua")

_REGISTERED: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


@functools.cache
def source(name: str) -> str:
    """Return the text of ``lua/<name>.lua``."""
    return (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")


def registered(redis: Any, name: str) -> Any:
    """Return ``redis``'s registered script ``name`` (registered on first use)."""
    try:
        scripts = _REGISTERED.setdefault(redis, {})
    except TypeError:  # a client that cannot be weakly referenced: register every time
        return redis.register_script(source(name))
    if name not in scripts:
        scripts[name] = redis.register_script(source(name))
    return scripts[name]
