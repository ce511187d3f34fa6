"""Wall-time overhead of a real ``Trainer`` run with the callback versus without.

The demo model (``remote.tiny.prepare_overfit_demo``) trains with ``logging_steps=1``, an
evaluation and a checkpoint every 10 steps. Runs with and without the callback alternate in
pairs (the order flips every pair) so that drift on a noisy machine hits both alike; the
figure is the median over pairs of ``with / without - 1``. Only ``trainer.train()`` is timed,
including the callback's hand-over of its events at the end of training. The time spent
inside the callback's hooks is also measured directly, as a check on the wall-time figure.
"""

from __future__ import annotations

import shutil
import statistics
import time
from typing import Any

from .common import Context, Figure

NAMES = ("train_overhead_pct",)
HOOKS = ("on_train_begin", "on_log", "on_evaluate", "on_save", "on_train_end")


def sizes(quick: bool) -> dict[str, Any]:
    return {"pairs": 3 if quick else 6, "epochs": 12 if quick else 40, "logging_steps": 1}


def run(ctx: Context) -> list[Figure]:
    from remote.tiny import prepare_overfit_demo

    size = ctx.sizes["training"]
    folder = ctx.folder("training")
    server = ctx.start_redis("training")
    spec = prepare_overfit_demo(folder / "demo", "bench-train")
    spec.update(num_train_epochs=size["epochs"], logging_steps=size["logging_steps"])
    _train(spec, folder / "warmup", None)  # warm up torch, tokenizers and the file cache
    without, with_, hook_share, steps = [], [], [], 0
    for pair in range(size["pairs"]):
        order = ("without", "with") if pair % 2 == 0 else ("with", "without")
        for variant in order:
            url = server.url if variant == "with" else None
            seconds, hooks_s, steps = _train(spec, folder / f"run-{pair}-{variant}", url)
            if variant == "with":
                with_.append(seconds)
                hook_share.append(100 * hooks_s / seconds)
            else:
                without.append(seconds)
        ctx.log(f"  pair {pair}: without {without[-1]:.2f}s, with {with_[-1]:.2f}s")
    overheads = [100 * (w / wo - 1) for w, wo in zip(with_, without, strict=True)]
    overhead = statistics.median(overheads)
    ctx.details["training"] = {
        "steps_per_run": steps,
        "without_s": [round(v, 3) for v in without],
        "with_s": [round(v, 3) for v in with_],
        "overhead_per_pair_pct": [round(v, 2) for v in overheads],
        "time_in_callback_hooks_pct": [round(v, 3) for v in hook_share],
    }
    note = (
        f"median of {len(overheads)} alternating pairs, {steps} steps each, logging every step; "
        f"time inside the callback's hooks {statistics.median(hook_share):.2f} % of the run"
    )
    return [Figure("train_overhead_pct", overhead, "%", "<=", 1, note)]


def _train(spec: dict, output, redis_url: str | None) -> tuple[float, float, int]:
    from transformers import PrinterCallback, set_seed

    from producer import CheckpointEventsCallback
    from remote.training import build_trainer

    callbacks = []
    spent = [0.0]
    if redis_url is not None:
        callback = CheckpointEventsCallback(
            "bench-train", redis_url=redis_url, spool_dir=output / "spool"
        )
        _time_hooks(callback, spent)
        callbacks.append(callback)
    set_seed(spec["seed"])
    trainer = build_trainer({**spec, "output_dir": str(output)}, callbacks)
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    steps = trainer.state.global_step
    shutil.rmtree(output, ignore_errors=True)
    return seconds, spent[0], steps


def _time_hooks(callback: Any, spent: list[float]) -> None:
    for name in HOOKS:
        method = getattr(callback, name)

        def timed(*args, _method=method, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        setattr(callback, name, timed)
