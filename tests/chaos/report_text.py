"""How RELIABILITY.md spells figures (shared by the report's section writers)."""

from __future__ import annotations

from typing import Any

Figures = dict[str, Any]


def _n(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _lost(f: Figures) -> str:
    lost, dup = f.get("lost", "?"), f.get("duplicates", "?")
    return f"**{_n(lost)} lost, {_n(dup)} counted twice**"
