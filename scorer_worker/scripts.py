"""Lua scripts as ``lua/<name>.lua`` files beside their package, read once, registered once.

The scorer's are in ``scorer_worker/lua/``, the sink's in ``sink/lua/``. Every key a script
touches is passed in ``KEYS`` (all of one job's keys share its hash tag, so one node holds
them), and field names come in ``ARGV`` from :mod:`scorer_worker.keys`.

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

_Scripts = dict[tuple[Path, str], Any]
_REGISTERED: weakref.WeakKeyDictionary[Any, _Scripts] = weakref.WeakKeyDictionary()


@functools.cache
def source(name: str, lua_dir: Path = LUA_DIR) -> str:
    """Return the text of ``<lua_dir>/<name>.lua``."""
    return (lua_dir / f"{name}.lua").read_text(encoding="utf-8")


def registered(redis: Any, name: str, lua_dir: Path = LUA_DIR) -> Any:
    """Return ``redis``'s registered script ``name`` (registered on first use)."""
    try:
        scripts = _REGISTERED.setdefault(redis, {})
    except TypeError:  # a client that cannot be weakly referenced: register every time
        return redis.register_script(source(name, lua_dir))
    if (lua_dir, name) not in scripts:
        scripts[(lua_dir, name)] = redis.register_script(source(name, lua_dir))
    return scripts[(lua_dir, name)]
