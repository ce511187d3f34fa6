"""The data side on a 3-master Redis Cluster beside a single server, in one run (issue 15).

Each measurement runs the pipeline with the queue side (RQ, the job index, the markers) on
its private plain ``redis-server`` and the data side (``CKPT_DATA_REDIS_URL``: each job's
stream, state, meta, decision) on servers of its own, emptied before each measurement:

- ``single``: one plain ``redis-server`` (AOF, ``appendfsync everysec``);
- ``cluster``: a :class:`~ckpt_pipeline.testing.local_cluster.LocalCluster`, 3 masters and
  3 replicas (AOF, ``appendfsync everysec``), commits not waiting for the replicas;
- ``cluster_wait``: the same cluster with ``CKPT_DATA_WAIT_REPLICAS=1``: every node's
  commits are followed by ``WAIT 1`` (the commit is acknowledged by its master's replica).

The load and the measuring are the ``throughput``, ``latency`` and ``fanout`` groups' own
(:func:`benchmarks.throughput.measure` and the like), at smaller sizes; the load generator,
the raw XADDs, the commit watcher and the convergence checks all use the data-side client
(a cluster client on the cluster). Each figure is a ratio of two measurements of this run:
``cluster / single`` for the cost of the cluster, ``cluster_wait / cluster`` for the cost of
``WAIT``.

The machine has 2 cores: the cluster's 6 ``redis-server`` processes share them with the
pump, the workers and the load generator, where a real cluster has a machine (or at least
a core) per master. The cluster ratios are therefore lower bounds of what separate machines
give: what they measure is the per-event cost of the cluster (one script call per job
instead of one per 250 jobs, a pipeline per node, the replication stream), not its added
capacity.
"""

from __future__ import annotations

import os
from typing import Any

from ckpt_pipeline.testing.convergence import wait_until
from ckpt_pipeline.testing.local_cluster import LocalCluster
from ckpt_pipeline.testing.local_redis import LocalRedis

from . import fanout, latency, throughput
from .common import Context, Figure, percentile
from .costs import measure_costs, shard_pass_ms

NAMES = (
    "cluster_throughput_ratio",
    "cluster_latency_p99_ratio",
    "cluster_fanout_lag_p99_ratio",
    "cluster_drain_cost_ratio",
    "cluster_pump_pass_ratio",
    "cluster_flush_cost_ratio",
    "wait_throughput_ratio",
    "wait_latency_p99_ratio",
    "wait_drain_cost_ratio",
)
NOTIFY = ["--notify-keyspace-events", "KA"]
WAIT_ENV = {"CKPT_DATA_WAIT_REPLICAS": "1"}
# variant -> (data side, more environment of the processes)
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "single": ("single", {}),
    "cluster": ("cluster", {}),
    "cluster_wait": ("cluster", WAIT_ENV),
}
_COST = "in-process, {jobs} jobs x 1 event, median of {rounds} alternating rounds; "
# figure name part, the key in measure_costs' answer, the note
COST_FIGURES = (
    ("drain_cost", "drain_us_per_job", "drain_many of one task: {a:.0f} / {b:.0f} us per job"),
    ("pump_pass", "pump_pass_us_per_job", "one pump pass: {a:.1f} / {b:.1f} us per job"),
    ("flush_cost", "flush_us_per_job", "flush_job to SQLite: {a:.0f} / {b:.0f} us per job"),
)
SHARED_CORES = (
    "the cluster's 6 redis-servers share the machine's {cores} cores with the pipeline and "
    "the load generator: a lower bound of what separate machines give"
)


def sizes(quick: bool) -> dict[str, Any]:
    """The group's sizes: under 2 minutes in a quick run, under 6 in a full one."""
    if quick:
        return {
            "throughput_jobs": 50, "throughput_events_per_job": 500, "throughput_rounds": 1,
            "latency_jobs": 20, "latency_events_per_s": 1000, "latency_duration_s": 6,
            "fanout_jobs": 1000, "fanout_duration_s": 10, "fanout_sample_jobs": 200,
            "cost_jobs": 500, "cost_rounds": 3,
        }  # fmt: skip
    return {
        "throughput_jobs": 100, "throughput_events_per_job": 1000, "throughput_rounds": 2,
        "latency_jobs": 20, "latency_events_per_s": 1000, "latency_duration_s": 30,
        "fanout_jobs": 2500, "fanout_duration_s": 30, "fanout_sample_jobs": 500,
        "cost_jobs": 500, "cost_rounds": 8,
    }  # fmt: skip


def run(ctx: Context) -> list[Figure]:
    """Measure throughput, latency and fan-out on each data side; return the ratios."""
    size = ctx.sizes["cluster"]
    details: dict[str, Any] = {"load_average_1min": {}}
    ctx.details["cluster"] = details
    sides = DataSides(ctx)
    try:
        sides.start()
        costs = _costs(ctx, sides, size, details)
        tp = _throughput(ctx, sides, size, details)
        lat = _latency(ctx, sides, size, details)
        fan = _fanout(ctx, sides, size, details)
    finally:
        sides.stop()
    shared = SHARED_CORES.format(cores=os.cpu_count())
    details["note"] = shared
    rounds = size["throughput_rounds"]
    best = f"best of {rounds} rounds" if rounds > 1 else "one round"
    tp_note = (
        f"{size['throughput_jobs']} jobs x {size['throughput_events_per_job']:,} events, "
        f"{best}; {{a:,.0f}} / {{b:,.0f}} ev/s"
    )
    lat_note = (
        f"eval XADD to row, {size['latency_jobs']} jobs at {size['latency_events_per_s']:,} "
        f"events/s for {size['latency_duration_s']} s; p99 {{a:.1f}} / {{b:.1f}} ms"
    )
    fan_note = (
        f"{size['fanout_jobs']:,} jobs x 1 event/s for {size['fanout_duration_s']} s; "
        "p99 {a:.2f} / {b:.2f} s"
    )
    cost_note = _COST.format(jobs=size["cost_jobs"], rounds=size["cost_rounds"])
    return [
        _ratio("cluster_throughput_ratio", tp["cluster"], tp["single"], tp_note + "; " + shared),
        _ratio("cluster_latency_p99_ratio", lat["cluster"], lat["single"], lat_note),
        _ratio("cluster_fanout_lag_p99_ratio", fan["cluster"], fan["single"], fan_note),
        *(
            _ratio(
                f"cluster_{what}_ratio",
                costs["cluster"][key],
                costs["single"][key],
                cost_note + note,
            )
            for what, key, note in COST_FIGURES
        ),
        _ratio("wait_throughput_ratio", tp["cluster_wait"], tp["cluster"], tp_note + ", WAIT 1"),
        _ratio("wait_latency_p99_ratio", lat["cluster_wait"], lat["cluster"], lat_note),
        _ratio(
            "wait_drain_cost_ratio",
            costs["cluster_wait"]["drain_us_per_job"],
            costs["cluster"]["drain_us_per_job"],
            cost_note + COST_FIGURES[0][2] + ", WAIT 1",
        ),
    ]


def _costs(
    ctx: Context, sides: DataSides, size: dict[str, Any], details: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """The per-job costs of a drain, a pump pass and a flush, in this process, per variant."""
    single, cluster = sides.use("single"), sides.use("cluster")
    data = {"single": single, "cluster": cluster, "cluster_wait": cluster}
    envs = {variant: env for variant, (_kind, env) in VARIANTS.items()}
    costs = measure_costs(ctx, data, envs, jobs=size["cost_jobs"], rounds=size["cost_rounds"])
    details["in_process_us_per_job"] = costs
    total, shards = size.get("shard_index_jobs", 100_000), size.get("shard_count", 24)
    details[f"pump_shard_pass_1_of_{shards}_at_{total}_jobs"] = {
        kind: shard_pass_ms(ctx, sides.use(kind)[0], total=total, shards=shards)
        for kind in ("single", "cluster")
    }
    _note_load(ctx, details, "cluster-costs")
    return costs


def _ratio(name: str, value: float, base: float, note: str) -> Figure:
    """``value / base`` as an information figure, both values in the note."""
    ratio = value / base if base else float("nan")
    return Figure(name, ratio, "x", "info", None, note.format(a=value, b=base))


def _throughput(
    ctx: Context, sides: DataSides, size: dict[str, Any], details: dict[str, Any]
) -> dict[str, float]:
    """events/s per variant: the best of the rounds, the order reversed every other round."""
    tp_size = {
        "jobs": size["throughput_jobs"],
        "events_per_job": size["throughput_events_per_job"],
        "timeout_s": 120,
    }
    rates: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    raw: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for index in range(size["throughput_rounds"]):
        order = list(VARIANTS) if index % 2 == 0 else list(reversed(VARIANTS))
        for variant in order:
            kind, env = VARIANTS[variant]
            name = f"cluster-tp-{variant}-{index}"
            url, _pids = sides.use(kind)
            got = throughput.measure(ctx, name, tp_size, data_url=url, env=env)
            _note_load(ctx, details, name)
            if not got["finished"]:
                raise RuntimeError(f"{name}: not caught up after {tp_size['timeout_s']} s")
            rates[variant].append(round(got["events_per_s"]))
            run_details = got["details"]
            details.setdefault("throughput_runs", {})[name] = {
                "elapsed_s": run_details["elapsed_s"],
                "xadd_phase_s": run_details["xadd_phase_s"],
                "rq_workers": {
                    worker: [stats["tasks"], stats["ms_in_task_function_per_task"]]
                    for worker, stats in run_details["rq_workers"].items()
                },  # tasks done, ms in the task function per task
            }
            raw[variant].append(round(got["raw_xadd_per_s"]))
    details["throughput_events_per_s_by_round"] = rates
    details["raw_xadd_per_s_by_round"] = raw
    return {variant: max(values) for variant, values in rates.items()}


def _latency(
    ctx: Context, sides: DataSides, size: dict[str, Any], details: dict[str, Any]
) -> dict[str, float]:
    """Eval-to-row latency p99 (ms) per variant."""
    lat_size = {
        "jobs": size["latency_jobs"],
        "events_per_s": size["latency_events_per_s"],
        "duration_s": size["latency_duration_s"],
        "eval_every": size.get("latency_eval_every", 100),
    }
    p99 = {}
    for variant, (kind, env) in VARIANTS.items():
        name = f"cluster-lat-{variant}"
        url, _pids = sides.use(kind)
        got = latency.measure(ctx, name, lat_size, data_url=url, env=env)
        _note_load(ctx, details, name)
        ms, to_commit = got["ms"], got["to_commit_ms"]
        p99[variant] = percentile(ms, 99)
        details[f"latency_{variant}"] = {
            "evals_measured": len(ms),
            "row_p50_p99_ms": [round(percentile(ms, q), 1) for q in (50, 99)],
            "commit_p50_p99_ms": [round(percentile(to_commit, q), 1) for q in (50, 99)],
            "publish_rate_per_s": got["details"]["publish_rate_per_s"],
            "commands_per_event": got["details"]["commands_per_event"],
        }
    return p99


def _fanout(
    ctx: Context, sides: DataSides, size: dict[str, Any], details: dict[str, Any]
) -> dict[str, float]:
    """Fan-out lag p99 (s) on the single server and on the cluster (no WAIT)."""
    p99 = {}
    for variant in ("single", "cluster"):
        kind, env = VARIANTS[variant]
        name = f"cluster-fo-{variant}"
        url, pids = sides.use(kind)
        lag, got, _note = fanout.measure(
            ctx, size["fanout_jobs"], size["fanout_duration_s"], size["fanout_sample_jobs"],
            name=name, data_url=url, data_pids=pids, env=env,
        )  # fmt: skip
        _note_load(ctx, details, name)
        p99[variant] = lag
        keep = (
            "lag_p50_p90_p99_max_s", "uncommitted_sampled_events", "publish_rate_per_s",
            "generator_max_behind_s", "scoring_queue_depth_max", "commands_per_event",
            "top_commands_per_event", "load_window_s", "cpu_s_by_role_during_load",
            "cpu_ms_per_event_by_role", "row_writes_per_job_per_s_sampled",
            "row_writes_per_s_estimated", "pump_pass_ms_after_load", "rq_workers",
        )  # fmt: skip
        details[f"fanout_{variant}"] = {key: got[key] for key in keep if key in got}
    return p99


def _note_load(ctx: Context, details: dict[str, Any], name: str) -> None:
    """Record the 1-minute load average after a measurement."""
    details["load_average_1min"][name] = round(os.getloadavg()[0], 2)
    ctx.log(f"  {name}: done, load average {details['load_average_1min'][name]}")


class DataSides:
    """The group's two data sides, started once and emptied before each measurement.

    ``single`` is one ``redis-server``, ``cluster`` a 3-master, 3-replica
    :class:`LocalCluster`, both with AOF (``appendfsync everysec``) and keyspace
    notifications. :meth:`use` empties a side (``FLUSHALL`` on its masters, replicated
    before it returns, and an AOF rewrite on every node so no file grows across the
    measurements) and gives its URL and its servers' pids.

    Args:
        ctx: the run (its cleanup kills the servers if the group fails).
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.single: LocalRedis | None = None
        self.cluster: LocalCluster | None = None

    def start(self) -> DataSides:
        """Start both sides.

        Raises:
            RuntimeError, TimeoutError: a server did not start (see its log).
        """
        self.single = self.ctx.start_redis(
            "cluster-data-single", appendonly=True, extra_args=NOTIFY
        )
        self.cluster = LocalCluster(self.ctx.folder("cluster-data-cluster"), extra_args=NOTIFY)
        try:
            self.cluster.start()
        finally:
            self.ctx.servers.extend(self.cluster.nodes)  # killed by ctx.cleanup() on failure
        return self

    def stop(self) -> None:
        """Stop both sides."""
        if self.single is not None:
            self.ctx.stop_redis(self.single)
        if self.cluster is not None:
            self.cluster.stop()
            for node in self.cluster.nodes:
                if node in self.ctx.servers:
                    self.ctx.servers.remove(node)

    def use(self, kind: str) -> tuple[str, dict[str, int]]:
        """Empty the ``single`` or ``cluster`` side; return its URL and its servers' pids.

        Raises:
            TimeoutError: a node's replica or AOF rewrite did not catch up within 30 s.
        """
        if kind == "single":
            assert self.single is not None and self.single.process is not None
            nodes, masters = [self.single], 1
        else:
            assert self.cluster is not None
            nodes, masters = list(self.cluster.nodes), self.cluster.master_count
        pids = {}
        for index, node in enumerate(nodes):
            role = "master" if index < masters else "replica"
            assert node.process is not None
            pids[f"redis-data-{role}-{index}"] = node.process.pid
            if role == "master":
                with node.client() as client:
                    client.flushall()
                    if len(nodes) > 1:  # the cluster's replica has it too
                        client.execute_command("WAIT", 1, 30_000)
        for node in nodes:
            with node.client() as client:
                client.bgrewriteaof()
                wait_until(lambda c=client: _aof_idle(c), 30, 0.05, "the AOF rewrite")
        url = self.single.url if kind == "single" else self.cluster.url  # type: ignore[union-attr]
        return url, pids


def _aof_idle(client: Any) -> bool:
    info = client.info("persistence")
    return not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]
