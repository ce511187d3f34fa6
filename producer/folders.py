"""The run folder as the producer sees it: which checkpoints Hugging Face kept."""

from __future__ import annotations

import os
from pathlib import Path

from .wire import checkpoint_step


def retained_checkpoints(output_dir: str | os.PathLike[str]) -> list[str]:
    """Return the ``checkpoint-N`` folder names present in ``output_dir``, by step."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if p.is_dir() and checkpoint_step(p.name) is not None]
    return sorted(names, key=lambda name: checkpoint_step(name) or 0)
