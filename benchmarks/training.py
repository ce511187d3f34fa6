"""Wall-time overhead of a real ``Trainer`` run with the callback versus without.

The demo model (``remote.tiny.prepare_overfit_demo``) trains with ``logging_steps=1`` and an
evaluation and a checkpoint every 10 steps, with a ``CheckpointEventsCallback`` publishing to
a private ``redis-server``. Whole runs with and without the callback differ by far more than
1 % from one run to the next on a shared 2-core machine, so the two are measured side by side
inside each run: the callback is switched on and off every 10 steps (a block: 10 train logs,
one eval, one checkpoint), in the order on, off, off, on, ... so that a steady drift cancels,
and the figure is ``median(on blocks) / median(off blocks) - 1`` plus the one-off cost of the
``train_begin``/``train_end`` hooks (which hand the last events over) spread over the run.
Torch runs one thread so the other core stays free, as on a GPU machine where the CPU is not
the bottleneck; two threads on two busy cores make the runs erratic (3 s to 60 s).
"""

from __future__ import annotations

import shutil
import statistics
import time
from typing import Any

from .common import Context, Figure

NAMES = ("train_overhead_pct",)
BLOCK_STEPS = 10
HOOKS = ("on_train_begin", "on_log", "on_evaluate", "on_save", "on_train_end")
ONE_OFF_HOOKS = ("on_train_begin", "on_train_end")


def sizes(quick: bool) -> dict[str, Any]:
    return {"runs": 1 if quick else 3, "epochs": 80, "block_steps": BLOCK_STEPS}


def run(ctx: Context) -> list[Figure]:
    import torch
    from transformers.utils import logging as hf_logging

    from remote.tiny import prepare_overfit_demo

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    size = ctx.sizes["training"]
    folder = ctx.folder("training")
    server = ctx.start_redis("training")
    spec = prepare_overfit_demo(folder / "demo", "bench-train")
    spec.update(num_train_epochs=size["epochs"], logging_steps=1, eval_steps=BLOCK_STEPS,
                save_steps=BLOCK_STEPS, save_total_limit=3)  # fmt: skip
    on, off, one_off, run_s, hooks_s, steps = [], [], 0.0, 0.0, 0.0, 0
    try:
        warmup = {**spec, "num_train_epochs": 4}
        _train(warmup, folder / "warmup", server.url, [], [])  # warm up torch and the caches
        for index in range(size["runs"]):
            result = _train(spec, folder / f"run-{index}", server.url, on, off)
            one_off += result["one_off_s"]
            run_s += result["run_s"]
            hooks_s += result["hooks_s"]
            steps = result["steps"]
            ctx.log(f"  run {index}: {result['run_s']:.1f}s, {len(on)} on / {len(off)} off blocks")
    finally:
        torch.set_num_threads(threads)
    block_ratio = statistics.median(on) / statistics.median(off) - 1
    overhead = 100 * block_ratio + 100 * one_off / run_s
    ctx.details["training"] = {
        "steps_per_run": steps,
        "blocks_on_off": [len(on), len(off)],
        "median_block_s_on_off": [
            round(statistics.median(on), 4),
            round(statistics.median(off), 4),
        ],
        "block_spread_s_off_min_max": [round(min(off), 4), round(max(off), 4)],
        "block_overhead_pct": round(100 * block_ratio, 3),
        "one_off_hooks_pct_of_run": round(100 * one_off / run_s, 3),
        "time_in_callback_hooks_pct_of_on_blocks": round(100 * hooks_s / (sum(on) or 1), 3),
        "torch_threads": 1,
    }
    note = (
        f"callback on/off every {BLOCK_STEPS} steps inside {size['runs']} run(s) of {steps} steps, "
        f"logging every step ({len(on)}+{len(off)} blocks); time inside the hooks "
        f"{100 * hooks_s / (sum(on) or 1):.2f} % of the on blocks"
    )
    return [Figure("train_overhead_pct", overhead, "%", "<=", 1, note)]


def _train(spec: dict, output, redis_url: str, on: list, off: list) -> dict[str, Any]:
    from transformers import PrinterCallback, TrainerCallback, set_seed

    from producer import CheckpointEventsCallback
    from remote.training import build_trainer

    callback = CheckpointEventsCallback(
        "bench-train", redis_url=redis_url, spool_dir=output / "spool"
    )
    spent = {"hooks": 0.0, "one_off": 0.0}
    switch = {"on": True, "block_start": None, "block": 0}

    class Switch(TrainerCallback):
        """Forwards hooks to the callback in 'on' blocks; times the blocks."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % BLOCK_STEPS:
                return
            now = time.perf_counter()
            if switch["block_start"] is not None:
                (on if switch["on"] else off).append(now - switch["block_start"])
            switch["block_start"] = now
            switch["block"] += 1
            switch["on"] = switch["block"] % 4 in (0, 3)  # on, off, off, on, on, off, off, ...

    for name in HOOKS:
        _forward(Switch, callback, name, switch, spent)
    set_seed(spec["seed"])
    trainer = build_trainer({**spec, "output_dir": str(output)}, [Switch()])
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    run_s = time.perf_counter() - start
    steps = trainer.state.global_step
    shutil.rmtree(output, ignore_errors=True)
    return {
        "run_s": run_s,
        "one_off_s": spent["one_off"],
        "hooks_s": spent["hooks"],
        "steps": steps,
    }


def _forward(cls, callback: Any, name: str, switch: dict, spent: dict) -> None:
    method = getattr(callback, name)
    one_off = name in ONE_OFF_HOOKS

    def hook(self, *args, **kwargs):
        if not (one_off or switch["on"]):
            return None
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spent["one_off" if one_off else "hooks"] += time.perf_counter() - start

    setattr(cls, name, hook)
