"""The workers' process setup: the garbage collector is tuned once, after the imports."""

from __future__ import annotations

import gc

from ckpt_pipeline.worker import GC_THRESHOLDS, tune_gc


def test_tune_gc_freezes_the_imports_and_raises_the_thresholds():
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # the modules loaded so far are left out of collections
        garbage = []
        garbage.append(garbage)  # a cycle is still collected
        del garbage
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
