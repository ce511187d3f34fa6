"""Summaries of the profiles ``--profile DIR`` writes: where each process spent its CPU time.

py-spy's raw output is one collapsed stack per line (``frame;frame;...;leaf count``); the
summary lists, per process, the functions with the largest inclusive share of the samples
(the time spent in them and below) and the largest self share (in them alone). cProfile
files (``*.pstats``) are summarised by cumulative time. ``python -m benchmarks.profiles DIR``
prints the summary again.
"""

from __future__ import annotations

import io
import pstats
import sys
from collections import Counter
from pathlib import Path

TOP = 25
# rq's listener for worker commands waits on a pub/sub socket in its own thread.
IGNORED = ("PubSubWorkerThread.run",)


def summarize_collapsed(path: Path, top: int = TOP) -> str:
    """Inclusive and self shares of the functions in one py-spy raw file."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if any(frame.startswith(IGNORED) for frame in frames):
            continue
        total += count
        leaf[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return f"{path.name}: no samples\n"
    seconds = total / 250
    out = [f"{path.name}: {total} samples = {seconds:.1f} s holding the GIL", "  inclusive:"]
    for frame, count in inclusive.most_common(top):
        out.append(f"    {100 * count / total:5.1f}%  {frame}")
    out.append("  self:")
    for frame, count in leaf.most_common(top // 2):
        out.append(f"    {100 * count / total:5.1f}%  {frame}")
    return "\n".join(out) + "\n"


def summarize_pstats(path: Path, top: int = TOP) -> str:
    """The functions with the most cumulative time in one cProfile file."""
    stream = io.StringIO()
    stats = pstats.Stats(str(path), stream=stream)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    return f"{path.name}:\n{stream.getvalue()}\n"


def write_summary(directory: Path) -> Path:
    """Summarise every profile in ``directory`` into ``directory/summary.txt``."""
    parts = [
        summarize_collapsed(p) for p in sorted(directory.glob("*.txt")) if p.name != "summary.txt"
    ]
    parts += [summarize_pstats(p) for p in sorted(directory.glob("*.pstats"))]
    target = directory / "summary.txt"
    target.write_text("\n".join(parts), encoding="utf-8")
    return target


if __name__ == "__main__":
    print(write_summary(Path(sys.argv[1])).read_text())
