"""``python -m benchmarks``: run the benchmark groups, print the table, write the reports.

Usage::

    python -m benchmarks --quick --json out.json           # < 3 minutes
    python -m benchmarks --json out.json                    # the full sizes, < 15 minutes
    python -m benchmarks --quick --only callback,history    # groups or figure names
    python -m benchmarks --only cluster                     # data on a cluster vs one server,
                                                            # ~5 minutes (--quick: < 2)

Every process and server a group starts is stopped when the group ends, also on failure or
Ctrl-C; a group that fails records its error and the run goes on.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ckpt_pipeline.testing.processes import REPO

from . import (
    callback,
    cluster,
    decision,
    fanout,
    history,
    latency,
    memory,
    throughput,
    training,
    writes,
)
from .common import Context, Figure, fmt

NOTES_FILE = Path(__file__).with_name("where_the_time_goes.md")


@dataclass(frozen=True)
class Group:
    """A measurement group: the figures it gives, its sizes and how to run it."""

    name: str
    names: tuple[str, ...]
    sizes: Callable[[bool], dict[str, Any]]
    run: Callable[[Context], list[Figure]]


GROUPS = (
    Group("callback", callback.NAMES, callback.sizes, callback.run),
    Group("training", training.NAMES, training.sizes, training.run),
    Group("throughput", throughput.NAMES, throughput.sizes, throughput.run),
    Group("latency", latency.NAMES, latency.sizes, latency.run),
    # The closed loop's wait: the latency group's load again, pods reading their decisions.
    Group("decision", decision.NAMES, decision.sizes, decision.run),
    Group("history", history.NAMES, history.sizes, history.run),
    Group("writes", writes.NAMES, writes.sizes, writes.run),
    Group("redis_memory", memory.REDIS_NAMES, memory.redis_sizes, memory.run_redis_memory),
    Group("worker_rss", memory.RSS_NAMES, memory.rss_sizes, memory.run_worker_rss),
    # Last: 10,000 jobs at 10,000 events/s leave the machine loaded for a while after.
    Group("fanout", fanout.NAMES, fanout.sizes, fanout.run),
    # The data side on a 3-master cluster beside a single server (issue 15): ratios only.
    Group("cluster", cluster.NAMES, cluster.sizes, cluster.run),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Benchmarks of the checkpoint pipeline."
    )
    parser.add_argument("--quick", action="store_true", help="Scaled-down sizes (< 3 minutes).")
    parser.add_argument("--json", metavar="FILE", help="Write the figures as JSON to FILE.")
    parser.add_argument(
        "--only", metavar="NAME[,NAME]", help="Groups or figure names to run (default: all)."
    )
    parser.add_argument(
        "--report",
        "--output",
        dest="output",
        metavar="FILE",
        default=None,
        help="Write the Markdown report to FILE (e.g. BENCHMARKS.md); by default none is written.",
    )
    parser.add_argument(
        "--worker-class",
        default=None,
        help="rq worker class of the workers (default: the Procfile's).",
    )
    parser.add_argument(
        "--connection-class",
        default=None,
        help="rq --connection-class of the workers (default: the Procfile's; '' for none).",
    )
    parser.add_argument(
        "--scoring-workers",
        type=int,
        default=None,
        help="rq worker scoring count (default: 1; fan-out: 2, one per core).",
    )
    parser.add_argument("--sink-workers", type=int, default=1, help="rq worker sink count.")
    parser.add_argument("--keep", action="store_true", help="Keep the working folder (logs).")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="Sample the pipeline's processes with py-spy and profile in-process work with "
        "cProfile; write the profiles and their summary (DIR/summary.txt) to DIR.",
    )
    parser.add_argument("--list", action="store_true", help="List groups and figures, then exit.")
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="Run nothing: rewrite the --report report from a --json file of an earlier run "
        "(e.g. after editing benchmarks/where_the_time_goes.md).",
    )
    return parser.parse_args(argv)


def select(only: str | None) -> list[Group]:
    """The groups that give any of the comma-separated group or figure names."""
    if not only:
        return list(GROUPS)
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    known = {g.name for g in GROUPS} | {n for g in GROUPS for n in g.names}
    unknown = wanted - known
    if unknown:
        raise SystemExit(f"unknown benchmark name(s): {', '.join(sorted(unknown))}")
    return [g for g in GROUPS if g.name in wanted or wanted & set(g.names)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for group in GROUPS:
            print(f"{group.name}: {', '.join(group.names)}")
        return 0
    if args.render:
        if not args.output:
            raise SystemExit("--render needs --report FILE: the report to write")
        figures, meta = load_report(Path(args.render))
        Path(args.output).write_text(markdown(figures, meta), encoding="utf-8")
        print(table(figures))
        return 0
    groups = select(args.only)
    workdir = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    ctx = Context(
        quick=args.quick,
        workdir=workdir,
        worker_class=args.worker_class,
        scoring_workers=args.scoring_workers,
        sink_workers=args.sink_workers,
        profile_dir=Path(args.profile).resolve() if args.profile else None,
        connection_class=args.connection_class,
    )
    atexit.register(ctx.cleanup)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.monotonic()
    figures: list[Figure] = []
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    loads: dict[str, list[float]] = {}
    try:
        for group in groups:
            ctx.sizes[group.name] = group.sizes(args.quick)
            ctx.log(f"{group.name}: sizes {ctx.sizes[group.name]}")
            group_start = time.monotonic()
            load_start = os.getloadavg()[0]
            try:
                got = group.run(ctx)
            except Exception as exc:
                errors[group.name] = "".join(traceback.format_exception(exc))[-4000:]
                ctx.log(f"{group.name} FAILED: {type(exc).__name__}: {exc}")
                got = []
            finally:
                ctx.cleanup()
            timings[group.name] = round(time.monotonic() - group_start, 1)
            loads[group.name] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
            given = {f.name for f in got}
            message = errors.get(group.name, "").strip().splitlines()[-1:] or ["not measured"]
            got += [Figure(n, None, error=message[0]) for n in group.names if n not in given]
            figures += got
            ctx.log(f"{group.name}: done in {timings[group.name]}s")
            for figure in got:
                ctx.log(f"  {figure.name} = {fmt(figure.value)} {figure.unit} ({figure.target})")
    except KeyboardInterrupt:
        errors["run"] = "interrupted"
    finally:
        ctx.cleanup()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    duration = time.monotonic() - started
    meta = run_meta(ctx, args, argv, duration, timings, errors)
    meta["load_average_1min_start_end"] = loads
    print(table(figures))
    print(f"\n{'quick' if args.quick else 'full'} run: {duration:.0f} s; report {args.output}")
    if args.output:  # a tracked file is rewritten only when asked
        Path(args.output).write_text(markdown(figures, meta), encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json_report(figures, meta), encoding="utf-8")
    if ctx.profile_dir is not None and ctx.profile_dir.exists():
        from .profiles import write_summary

        print(f"profiles: {write_summary(ctx.profile_dir)}")
    return 1 if errors else 0


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def table(figures: list[Figure]) -> str:
    """The plain-text table printed at the end of a run."""
    lines = [f"{'name':<28}{'value':>14}  {'unit':<8}{'target':<16}met"]
    for f in figures:
        met = {True: "yes", False: "NO", None: "-"}[f.met]
        value = fmt(f.value) if f.error is None else "error"
        lines.append(f"{f.name:<28}{value:>14}  {f.unit:<8}{f.target:<16}{met}")
    return "\n".join(lines)


def run_meta(ctx, args, argv, duration, timings, errors) -> dict[str, Any]:
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "duration_s": round(duration, 1),
        "group_duration_s": timings,
        "command": command.strip(),
        "machine": machine(),
        "sizes": ctx.sizes,
        "worker_settings": ctx.worker_settings(),
        "details": ctx.details,
        "errors": errors,
    }


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model, versions and the commit measured."""
    import psutil
    import rq

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": cpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis_server": _version(["redis-server", "--version"]),
        "postgresql": _version(["pg_ctl", "--version"]),
        "rq": rq.__version__,
        "commit": _version(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
    }


def _version(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    return done.stdout.strip() or done.stderr.strip()


def json_report(figures: list[Figure], meta: dict[str, Any]) -> str:
    """The figures by name at the top level, then the details."""
    data: dict[str, Any] = {f.name: f.as_dict()["value"] for f in figures}
    data["results"] = [f.as_dict() for f in figures]
    data["meta"] = meta
    return json.dumps(data, indent=2, default=str) + "\n"


def load_report(path: Path) -> tuple[list[Figure], dict[str, Any]]:
    """The figures and run data of a ``--json`` file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    figures = []
    for result in data["results"]:
        op, _, limit = result["target"].partition(" ")
        value = result["value"]
        if isinstance(value, str):
            value = float(value)
        figure = Figure(result["name"], value, result["unit"], note=result["note"] or "")
        if op in ("<=", ">="):
            figure.op, figure.limit = op, float(limit.replace(",", ""))
        figure.error = result["error"]
        figure.verdict = result["met"]
        figures.append(figure)
    return figures, data["meta"]


def markdown(figures: list[Figure], meta: dict[str, Any]) -> str:
    """BENCHMARKS.md: the table, the machine, the sizes, the settings, how to rerun."""
    m = meta["machine"]
    met = {True: "yes", False: "**no**", None: "-"}
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['mode']} run, "
        f"{meta['duration_s']:.0f} s), commit `{m['commit']}`.",
        "",
        "| name | value | unit | target | met | how |",
        "|---|---:|---|---|---|---|",
    ]
    for f in figures:
        value = fmt(f.value) if f.error is None else "error"
        how = f.note if f.error is None else f"error: {f.error}"
        lines.append(
            f"| `{f.name}` | {value} | {f.unit} | {f.target} | {met[f.met]} | {_cell(how)} |"
        )
    misses = [f.name for f in figures if f.met is False]
    lines += ["", f"Targets missed: {', '.join(f'`{n}`' for n in misses) or 'none'}."]
    lines += [
        "",
        "## Machine",
        "",
        f"- {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['cpu']}",
        f"- {m['os']}",
        f"- Python {m['python']}, rq {m['rq']}",
        f"- {m['redis_server']}",
        f"- {m['postgresql']}",
        "",
        "## How to rerun",
        "",
        "From the repository root, after `pip install -e '.[dev]'` (redis-server and",
        "PostgreSQL's server binaries on the machine):",
        "",
        "```",
        "python -m benchmarks --quick --json out.json   # under 3 minutes",
        "python -m benchmarks --json out.json           # full sizes, under 15 minutes",
        "python -m benchmarks --only history,latency    # some groups or figures",
        "python -m benchmarks --only cluster            # data on a 3-master cluster vs one server",
        "```",
        "",
        f"This report: `{meta['command']}`.",
        "",
        "## Worker settings used",
        "",
    ]
    for name, value in meta["worker_settings"].items():
        lines.append(f"- `{name}`: {value}")
    lines += [
        "",
        "1-minute load average at the start and end of each group (2 cores: above 2, other",
        "work shared the machine): "
        + ", ".join(f"`{k}` {v[0]}-{v[1]}" for k, v in meta["load_average_1min_start_end"].items()),
    ]
    lines += ["", "## Sizes", ""]
    for name, size in meta["sizes"].items():
        took = meta["group_duration_s"].get(name)
        lines.append(f"- `{name}` ({took} s): {_sizes_text(size)}")
    lines += ["", "## Details", ""]
    for name, detail in meta["details"].items():
        lines.append(f"- `{name}`:")
        for key, value in detail.items():
            lines.append(f"  - {key}: {_cell(json.dumps(value, default=str))}")
    if meta["errors"]:
        lines += ["", "## Errors", ""]
        for name, text in meta["errors"].items():
            lines += [f"`{name}`:", "", "```", text.strip(), "```", ""]
    if NOTES_FILE.exists():
        lines += ["", NOTES_FILE.read_text(encoding="utf-8").strip()]
    return "\n".join(lines) + "\n"


def _sizes_text(size: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in size.items())


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    sys.exit(main())
