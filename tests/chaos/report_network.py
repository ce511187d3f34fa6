"""RELIABILITY.md's sections for the faults that are not clean stops (issue #16): a slow,
lossy, then blackholed link, under training and under the pipeline."""

from __future__ import annotations

from .report_text import Figures, _lost, _n


def link(one: bool) -> str:
    """How the processes under test reach the servers (one process, or several)."""
    they, own, reach = ("It", "its", "reaches") if one else ("They", "their", "reach")
    return (
        f"{they} run{'s' if one else ''} in a network namespace of {own} own and {reach} the "
        "servers only through a veth pair and a router namespace "
        "(`ckpt_pipeline/testing/netfault.py`) that makes the faults. A blackhole is iptables "
        "`DROP` in both directions there: nothing is refused, connects time out, sends go "
        "unanswered."
    )


BACKENDS = {
    "nfqueue": "an iptables `NFQUEUE` rule and `testing/packet_delay.py`, which holds each "
    "packet for the delay: this kernel has no netem",
    "netem": "`tc netem` on the router's veth",
}


def _packets(f: Figures) -> str:
    p = f.get("link_packets", {})
    return (
        f"{_n(p.get('delayed', 0))} packets delayed, {_n(p.get('dropped', 0))} lost at random, "
        f"{_n(p.get('blackholed', 0))} dropped by the blackhole"
    )


def network_training(f: Figures) -> list[str]:
    """Experiment 13: training behind a slow, lossy, then blackholed link."""
    backend = BACKENDS.get(f.get("link_backend", ""), f.get("link_backend", "?"))
    return [
        "A real `Trainer` (the demo's tiny GPT-2, a separate process) publishes through "
        "`CheckpointEventsCallback`. " + link(one=True) + " From step "
        f"60: 200 ms delay with 5 % loss on every packet leaving the namespace ({backend}) for "
        f"{_n(f['degraded_seconds'])} s, then a blackhole for {_n(f['blackhole_seconds'])} s, "
        f"then the link heals ({_packets(f)}). The scoring side starts after training.",
        "",
        "- **The callback, as the benchmark measures it** (`tests/chaos/callback_probe.py`: "
        "`on_log` once per ms with a real publisher, in the same namespace, through every "
        "phase; the benchmark's target is p99 <= 200 µs): "
        + "; ".join(
            f"{phase} {_n(f.get(f'bench_callback_calls_{phase}'))} calls, median "
            f"{_n(f.get(f'bench_callback_median_us_{phase}'))} µs, p99 "
            f"{_n(f.get(f'bench_callback_p99_us_{phase}'))} µs"
            for phase in ("healthy", "degraded", "blackholed", "after")
        )
        + f"; its events dropped: {_n(f.get('probe_events_dropped'))}.",
        f"- **The training thread**: each of the trainer's `emit` calls timed. While the link "
        f"was bad ({_n(f['callback_calls_faults'])} calls): median "
        f"{_n(f['callback_median_us_faults'])} µs, p99 {_n(f['callback_p99_us_faults'])} µs; "
        f"healthy link before: median {_n(f['callback_median_us_healthy'])}, p99 "
        f"{_n(f['callback_p99_us_healthy'])} µs; after: median "
        f"{_n(f['callback_median_us_after'])}, p99 {_n(f['callback_p99_us_after'])} µs (a few "
        "hundred calls next to torch: their p99 is near 200 µs on a healthy link too). Median "
        f"step {_n(f['median_step_s_degraded'])} s degraded, "
        f"{_n(f['median_step_s_blackholed'])} s blackholed, {_n(f['median_step_s_after'])} s "
        f"after (exit code {_n(f['trainer_exit_code'])}).",
        f"- **Delivery**: {_n(f['events_published'])} published, {_n(f['events_spooled'])} "
        f"went through the spool, {_n(f['events_dropped'])} dropped; "
        f"{_n(f['events_in_stream'])} stream entries ({_n(f['events_redelivered'])} "
        f"redeliveries of a batch whose reply was lost), {_n(f['events_missing'])} missing; "
        f"in publish order: {_n(f['in_order'])}.",
        f"- **Converged**: every event published before the heal was in the stream "
        f"{_n(f['delivered_seconds_after_heal'])} s after it (the spool empty after "
        f"{_n(f['spool_empty_seconds_after_heal'])} s); the scoring side then took "
        f"{_n(f['scoring_converged_seconds'])} s.",
        f"- **Row** against a fault-free run of the same events: {_n(f['rows_differing'])} "
        f"differing, {_n(f['jobs_with_differing_metrics'])} with different metric rows "
        f"({_n(f['metric_rows_compared'])} compared); dead letters {_n(f['dead_letters'])}.",
        f"- **Result**: {_lost(f)}.",
    ]


def _pipeline_common(f: Figures) -> list[str]:
    return [
        f"- **Converged** {_n(f['converged_seconds_after_heal'])} s after the heal, with the "
        f"same processes ({_n(f['processes_alive_through_blackhole'])} alive through it, "
        f"{_n(f['process_restarts'])} restarts, exited: "
        f"{_n(len(f['processes_that_exited_by_themselves']))}).",
        f"- **Left open**: {_n(f['flush_locks_held'])} flush locks, "
        f"{_n(f['sink_transactions_open'])} sink transactions.",
        f"- **Rows** against a fault-free run of the same events: {_n(f['rows_differing'])} "
        f"differing, {_n(f['rows_missing'])} missing, {_n(f['jobs_with_differing_metrics'])} "
        f"jobs with different metric rows ({_n(f['metric_rows_compared'])} compared), "
        f"{_n(f['duplicate_metric_rows'])} duplicate; dead letters {_n(f['dead_letters'])}.",
        f"- **Result**: {_lost(f)}.",
    ]


def network_workers(f: Figures) -> list[str]:
    """Experiment 14: the pump and the workers blackholed from Redis."""
    return [
        f"{_n(f['jobs'])} jobs publish {_n(f['events_published'])} events from outside while "
        "1 pump, 2 `rq worker scoring` and 2 `rq worker sink` run in one namespace. "
        + link(one=False)
        + f" After 8 s every packet between them and Redis is dropped for "
        f"{_n(f['blackhole_seconds'])} s ({_packets(f)}); publishing ends as the link heals. "
        "Default settings (`CKPT_TCP_KEEPALIVE_*`: a silent peer found after 11 s; "
        "`CKPT_REDIS_RETRY_S` 60 s).",
        "",
        f"- **Cut off**: {_n(f['state_versions_committed_during_blackhole'])} state versions "
        f"committed during the blackhole; {_n(f['jobs_behind_scoring_at_heal'])} jobs behind "
        "at the heal.",
        "- **What the experiment found**: the server keeps each worker's blocking `BLMOVE` of a "
        "connection the worker gave up (nothing told the server; its `tcp-keepalive` is "
        "300 s), and hands the next task to it. The first run converged 94 s after the heal, "
        "one queued-marker TTL (30 s) per swallowed task and queue. Since then "
        "`scorer_worker/orphans.py` closes those remains from the process's next connection "
        "(`CLIENT KILL ID ... ADDR ...`).",
        *_pipeline_common(f),
    ]


def network_sink(f: Figures) -> list[str]:
    """Experiment 15: the sink blackholed from PostgreSQL in the middle of transactions."""
    return [
        "The same setup; this time only the packets between the sink workers and PostgreSQL "
        f"are dropped, for {_n(f['blackhole_seconds'])} s ({_packets(f)}). To cut "
        "transactions in the middle, every row UPDATE is first made to sleep 2 s inside its "
        "transaction (a trigger); the link goes once a sink session holds a row lock.",
        "",
        f"- **Cut mid-transaction**: sink sessions holding row locks: "
        f"{_n(f['transactions_cut_holding_row_locks'])}. The server ended them "
        f"{_n(f['abandoned_transactions_ended_seconds'])} s after the cut: the 2 s UPDATE, then "
        "`CKPT_SINK_IDLE_IN_TRANSACTION_TIMEOUT_S` (10 s), which frees their locks while the "
        "link is still down (without it they are held until the server's TCP keepalive, "
        "2 hours by default). The sink's side of each connection ends by its keepalive and "
        "`CKPT_TCP_USER_TIMEOUT_MS`; its writes retry and the pump asks again.",
        f"- **Behind**: {_n(f['jobs_behind_the_sink_at_heal'])} jobs behind the sink at the heal.",
        *_pipeline_common(f),
    ]
