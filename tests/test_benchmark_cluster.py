"""The ``cluster`` benchmark group's harness at a tiny size: every variant runs (the data
side on a single server, on a 3-master cluster, and on the cluster with ``WAIT``), the load
reaches the cluster through cluster clients, and every figure is a finite ratio.

Not a measurement: the sizes are far too small for the ratios to mean anything.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from benchmarks import cluster
from benchmarks.common import Context

pytestmark = pytest.mark.slow

TINY = {
    "throughput_jobs": 4, "throughput_events_per_job": 30, "throughput_rounds": 1,
    "latency_jobs": 3, "latency_events_per_s": 150, "latency_duration_s": 1,
    "latency_eval_every": 10,
    "fanout_jobs": 60, "fanout_duration_s": 1, "fanout_sample_jobs": 12,
    "cost_jobs": 20, "cost_rounds": 2, "shard_index_jobs": 2000, "shard_count": 4,
}  # fmt: skip


def test_cluster_group_runs_every_variant_at_a_tiny_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in [v for v in os.environ if v.startswith("CKPT_")]:
        monkeypatch.delenv(variable)  # the processes inherit the shell's CKPT_* settings
    ctx = Context(quick=True, workdir=tmp_path, verbose=False)
    ctx.sizes["cluster"] = TINY
    try:
        figures = cluster.run(ctx)
    finally:
        ctx.cleanup()
    assert [f.name for f in figures] == list(cluster.NAMES)
    for figure in figures:
        assert figure.error is None and math.isfinite(figure.value) and figure.value > 0, figure
    details = ctx.details["cluster"]
    assert set(details["throughput_events_per_s_by_round"]) == set(cluster.VARIANTS)
    for variant in cluster.VARIANTS:
        assert details[f"latency_{variant}"]["evals_measured"] > 0
    on_cluster = details["fanout_cluster"]
    assert on_cluster["uncommitted_sampled_events"] == 0
    # Six data servers on the cluster, one on the single server; each was seen working.
    cpu = on_cluster["cpu_s_by_role_during_load"]
    assert {"redis-data-master", "redis-data-replica", "scoring", "loadgen"} <= set(cpu)
    assert cpu["redis-data-master"] > 0
    assert on_cluster["pump_pass_ms_after_load"]["median_ms"] > 0
    shard = details["pump_shard_pass_1_of_4_at_2000_jobs"]["cluster"]
    assert 300 < shard["shard_jobs"] < 700 and shard["pass_ms"] > 0
    assert not ctx.servers and not ctx.processes  # everything stopped
