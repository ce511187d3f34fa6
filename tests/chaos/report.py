"""Render the figures of the chaos experiments as ``RELIABILITY.md``.

    python -m pytest -m chaos                          # writes chaos-results.json
    python -m tests.chaos.report chaos-results.json    # writes RELIABILITY.md

Every number in the document comes from the results file; the prose around them says what
each experiment does, so a rerun that fails shows up as a non-zero loss, not as stale text.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ckpt_pipeline.testing.processes import REPO

from .faults import TARGETED_PHASES
from .report_disk import full_disk
from .report_failover import sentinel_failover
from .report_network import network_sink, network_training, network_workers
from .report_notes import METHOD, NOT_COVERED
from .report_text import Figures, _lost, _n
from .report_topology import cluster_failover, crash_on_a_cluster


def crash(f: Figures) -> list[str]:
    kinds = f.get("kills_by_kind", {})
    roles = f.get("kills_by_role", {})
    backlog = f.get("backlog_at_last_fault", {})
    aimed = [f"{kinds.get(k, 0)} {k} ({why})" for k, why in TARGETED_PHASES.items()]
    random_kinds = [f"{n} {k}" for k, n in sorted(kinds.items()) if k not in TARGETED_PHASES]
    return [
        f"{_n(f['jobs'])} jobs x {_n(f['events_per_job'])} events ({_n(f['events_published'])} "
        f"in all, {_n(f['replayed_events_in_streams'])} of them replays of an earlier event; "
        "about half the runs resume from a checkpoint; some end `failed`) are published in 50 "
        "rounds over ~25 s while 1 pump, 2 `rq worker scoring` and 2 `rq worker sink` run "
        "(the Procfile's commands). 30 % of row UPDATEs `pg_sleep` 0.4 s inside the sink's "
        "transaction.",
        "",
        f"- **Injected**: {_n(f['kills_total'])} SIGKILLs (of a process and any work-horse), each "
        f"followed by a restart: pump {_n(roles.get('pump', 0))}, scoring "
        f"{_n(roles.get('scoring', 0))}, sink {_n(roles.get('sink', 0))}. Aimed: "
        + "; ".join(aimed)
        + ". Random instants: "
        + "; ".join(random_kinds)
        + f". Aimed phase not seen in time (fell back to a random kill): "
        f"{_n(f.get('aimed_phase_not_seen', 0))}. Seed {f['seed']} "
        f"(`CKPT_CHAOS_SEED={f['seed']}` replays the schedule).",
        f"- **Compared with** a fault-free run of the same event lists: "
        f"{_n(f['jobs_compared'])} job rows (every column the sink writes but "
        f"`scoring_version`, which counts commits and depends on batching) and "
        f"{_n(f['metric_rows_compared'])} metric rows: {_n(f['rows_differing'])} rows differ, "
        f"{_n(f['rows_missing'])} missing, {_n(f['jobs_with_differing_metrics'])} jobs with "
        f"different metric rows, {_n(f['duplicate_metric_rows'])} duplicate (job, step) rows.",
        f"- **Dead letters**: {_n(f['dead_letters'])}. Processes that exited by themselves: "
        f"{_n(len(f['processes_that_exited_by_themselves']))}. Tasks RQ still lists as started "
        f"by a killed worker (RQ fails them at its next maintenance; nothing waits on them: "
        f"the pump enqueued the work again): "
        f"{_n(f.get('rq_jobs_left_started_by_killed_workers', '?'))}; RQ jobs failed: "
        f"{_n(f.get('rq_jobs_failed', '?'))}.",
        f"- **Row writes**: {_n(f['row_writes'])} (the fault-free run: "
        f"{_n(f['row_writes_reference'])}).",
        f"- **Converged** {_n(f['converged_seconds_after_last_fault'])} s after the last kill "
        f"(queued-marker and flush-lock TTLs lowered to 5 s), working off the backlog the "
        f"kills left: {_n(backlog.get('undrained_events', '?'))} undrained events, "
        f"{_n(backlog.get('jobs_behind_the_sink', '?'))} jobs behind the sink. Whole run "
        f"{_n(f['run_seconds'])} s.",
        f"- **Result**: {_lost(f)}.",
    ]


def defaults(f: Figures) -> list[str]:
    kills = "; ".join(f"{k['kind']} ({k['target']})" for k in f.get("kills", []))
    return [
        f"The worst single kills with the **default** timeouts: {_n(f['jobs'])} jobs, "
        f"{_n(f['events_published'])} events; half are published, then a worker is killed "
        "after taking a task and before starting it (its queued marker stays until its 30 s "
        "TTL), and a sink worker is killed inside a write (its flush lock stays until its "
        "30 s TTL); then the other half is published.",
        "",
        f"- **Injected**: {kills}.",
        f"- **Converged** {_n(f['converged_seconds_after_last_fault'])} s after the last kill: "
        "within 60 s with the defaults, no manual step, no RQ timeout involved.",
        f"- **Result**: {_lost(f)} ({_n(f['jobs_compared'])} rows, "
        f"{_n(f['metric_rows_compared'])} metric rows compared); dead letters "
        f"{_n(f['dead_letters'])}.",
    ]


def training(f: Figures) -> list[str]:
    k = f.get("killed_training_process", {})
    return [
        "A real `Trainer` (the tiny GPT-2 of the demo, a separate process) publishes through "
        f"`CheckpointEventsCallback`; `redis-server` is stopped for {_n(f['redis_down_seconds'])} "
        "s at step 100 and restarted. The scoring side starts after training, so the stream "
        "still holds every entry as delivered.",
        "",
        f"- **Training**: exit code {_n(f['trainer_exit_code'])}; {_n(f['steps'])} steps, "
        f"{_n(f['steps_during_outage'])} of them during the outage. Step time median "
        f"{_n(f['median_step_s_during'])} s during vs {_n(f['median_step_s_outside'])} s "
        f"outside; p95 {_n(f['p95_step_s_during'])} vs {_n(f['p95_step_s_outside'])} s; max "
        f"{_n(f['max_step_s_during'])} vs {_n(f['max_step_s_outside'])} s. Longest of "
        f"{_n(f['publish_calls'])} `publish` calls: {f['publish_call_max_s'] * 1e6:.0f} µs.",
        f"- **Spool**: {_n(f['events_spooled'])} events spooled; largest spool "
        f"{_n(f['spool_max_bytes'])} bytes, against {_n(f['outage_events_bytes'])} bytes of "
        f"events published during the outage; {_n(f['spool_left_bytes'])} bytes left after. "
        f"Largest in-memory queue: {_n(f['memory_queue_max_events'])} events; dropped "
        f"{_n(f['events_dropped'])}.",
        f"- **Delivery**: {_n(f['events_published'])} published, {_n(f['events_in_stream'])} "
        f"entries in the stream ({_n(f['events_redelivered'])} redeliveries of a batch cut by "
        f"the outage), {_n(f['events_missing'])} missing; first occurrences in publish order: "
        f"{_n(f['in_order'])}.",
        f"- **Delivered** the spool {_n(f.get('converged_seconds_after_last_fault'))} s after "
        f"Redis returned, while training went on; the scoring side then converged in "
        f"{_n(f['scoring_converged_seconds'])} s.",
        f"- **Row** against the same events delivered without outage: "
        f"{_n(f['rows_differing'])} differing, {_n(f['jobs_with_differing_metrics'])} with "
        f"different metric rows ({_n(f['metric_rows_compared'])} compared).",
        f"- **Killed training process** (SIGKILL at step 60 while Redis was down): "
        f"{_n(k.get('published_before_kill_cli'))} events published, "
        f"{_n(k.get('spooled_when_killed_cli'))} in the spool, "
        f"{_n(k.get('in_memory_at_kill_cli'))} still in memory (lost with the process); "
        f"`ckpt-pipeline spool flush DIR` delivered the spool in order, "
        f"{_n(k.get('lost_via_cli'))} lost. Again with delivery at the next start of the job's "
        f"training: {_n(k.get('spooled_when_killed_next_start'))} spooled, "
        f"{_n(k.get('in_memory_at_kill_next_start'))} in memory, delivered first and in order, "
        f"{_n(k.get('lost_at_next_start'))} lost.",
        f"- **Result**: {_lost(f)}.",
    ]


def restart(f: Figures) -> list[str]:
    restarts = "; ".join(f"{r['how']}, down {_n(r['down_s'])} s" for r in f.get("restarts", []))
    return [
        f"{_n(f['jobs'])} jobs publish {_n(f['events_published'])} events through "
        "`EventPublisher` while the pump and workers run; `redis-server` (AOF on) is restarted "
        "twice under them. The harness restarts no process.",
        "",
        f"- **Injected**: {restarts}.",
        f"- Producers spooled {_n(f['events_spooled_by_producers_while_down'])} events while "
        f"Redis was away; {_n(f['spool_bytes_left'])} bytes left after. State versions that "
        f"went backwards across a restart: {_n(f['state_versions_regressed'])}.",
        f"- Processes that exited: {_n(len(f['processes_that_exited_by_themselves']))}; "
        f"RQ jobs failed: {_n(f['rq_jobs_failed'])}.",
        f"- **Converged** {_n(f['converged_seconds_after_last_fault'])} s after the last "
        f"restart. Rows against a fault-free run: {_n(f['rows_differing'])} differ, "
        f"{_n(f['jobs_with_differing_metrics'])} with different metric rows "
        f"({_n(f['metric_rows_compared'])} compared); dead letters {_n(f['dead_letters'])}.",
        f"- **Result**: {_lost(f)}.",
    ]


def sink_outage(f: Figures) -> list[str]:
    return [
        f"{_n(f['jobs'])} jobs publish {_n(f['events_published'])} events at a steady rate; "
        f"PostgreSQL is stopped for {_n(f['postgres_down_seconds'])} s in the middle and "
        "started again as the last events arrive. Default settings.",
        "",
        f"- While it was down: {_n(f['state_versions_committed_while_down'])} state versions "
        f"committed, {_n(f['written_versions_during_outage'])} written; "
        f"{_n(f['jobs_behind_the_sink_when_it_returned'])} jobs behind when it returned.",
        f"- **Writes during recovery**: {_n(f['row_writes_during_recovery'])} row UPDATEs "
        f"(a trigger counts them) for {_n(f['jobs'])} jobs: coalesced, about one per job, "
        f"not one per missed version ({_n(f['state_versions_committed_after_return'])} "
        "versions were committed after the return).",
        f"- **Converged** {_n(f['converged_seconds_after_postgres_returned'])} s after "
        f"PostgreSQL returned. Rows against a fault-free run: {_n(f['rows_differing'])} "
        f"differ, {_n(f['jobs_with_differing_metrics'])} with different metric rows "
        f"({_n(f['metric_rows_compared'])} compared). Dead letters {_n(f['dead_letters'])}.",
        f"- **Result**: {_lost(f)}.",
    ]


def bad_input(f: Figures) -> list[str]:
    categories = ", ".join(f"{k} {_n(v)}" for k, v in sorted(f["invalid_by_category"].items()))
    examples = "\n".join(f"  - {k}: `{v}`" for k, v in sorted(f["reason_examples"].items()))
    return [
        f"{_n(f['invalid_entries'])} invalid entries are XADDed raw into the streams of "
        f"{_n(f['jobs'])} live jobs, between their {_n(f['valid_events'])} valid events, "
        f"which also arrive out of order ({f['valid_reordered_windows']}) and with "
        f"{_n(f['valid_replays'])} replays.",
        "",
        f"- **Injected**: {categories}.",
        f"- **Dead letters**: {_n(f['dead_letters'])}; invalid entries not dead-lettered "
        f"{_n(f['invalid_not_dead_lettered'])}; valid events dead-lettered "
        f"{_n(f['valid_dead_lettered'])}; unreadable reasons {_n(f['unreadable_reasons'])}; "
        f"reasons that do not name the problem {_n(f['reasons_not_naming_the_problem'])}. "
        "One reason per kind:",
        examples,
        f"- Processes that exited: {_n(len(f['processes_that_exited_by_themselves']))}; RQ "
        f"jobs failed: {_n(f['rq_jobs_failed'])}.",
        f"- States differing from a clean run of the valid events alone: "
        f"{_n(f['states_differing_from_clean_run'])}; rows differing {_n(f['rows_differing'])}, "
        f"jobs with different metric rows {_n(f['jobs_with_differing_metrics'])} "
        f"({_n(f['metric_rows_compared'])} compared). Converged in "
        f"{_n(f['converged_seconds'])} s.",
        f"- **Result**: {_lost(f)}.",
    ]


def poison(f: Figures) -> list[str]:
    return [
        f"{_n(f['jobs'])} jobs, {_n(f['events_published'])} events; one valid `eval` makes "
        "the scoring workers raise (injected scoring bug), and one malformed entry is added.",
        "",
        f"- The poison event was tried {_n(f['poison_max_attempts'])} times "
        f"({_n(f['failed_drain_attempts_in_rq'])} failed drains in RQ, the last attempt "
        f"dead-letters it): `{f['dead_letter_reason']}`. The job went on: its other events "
        f"count ({_n(f['job_went_on_rows_differing'])} rows differ from a run without the "
        f"event); converged in {_n(f['converged_seconds'])} s. Processes that exited: "
        f"{_n(len(f['processes_that_exited_by_themselves']))}.",
        f"- The operator sees it: `ckpt-pipeline status JOB` shows it "
        f"({_n(f['status_shows_poison'])}), `dead list --job` lists it "
        f"({_n(f['dead_list_shows_it'])}), `dead show` prints its payload "
        f"({_n(f['dead_show_shows_payload'])}).",
        f"- After the fix (scoring workers redeployed without the bug) `dead requeue` "
        f"({f['requeue_output']}) made it count: {_n(f['rows_differing_after_fix_and_requeue'])} "
        f"rows differ from a run where it never failed; converged "
        f"{_n(f['converged_seconds_after_requeue'])} s after. `dead purge --job` "
        f"({f['purge_output']}) left {_n(f['dead_letters_after_purge'])} dead letters.",
        f"- **Result**: {_lost(f)}.",
    ]


def flood(f: Figures) -> list[str]:
    return [
        f"One pod XADDs at full speed with its own credentials for {_n(f['flood_s'])} s "
        f"(`{'; '.join(f['flooder_output'])}`) beside {_n(f['normal_jobs'])} normal jobs; "
        "default limits (`CKPT_JOB_MAX_UNDRAINED_EVENTS`, `..._BYTES`, the token bucket).",
        "",
        f"- **Cut off**: `{f['cut_off_reason']}`; its Redis user enabled afterwards: "
        f"{f['flooder_user_enabled']}; its row `{f['flooder_row_status']}` with "
        f"`{f['flooder_row_error']}`; its stream left: {_n(f['flooder_stream_left'])}.",
        f"- **Redis memory** peaked at {_n(f['redis_peak_mb'])} MB (bound "
        f"{_n(f['memory_bound_mb'])} MB).",
        f"- **Other jobs**: evaluation to decision lag p50 {_n(f['lag_p50_s'])} s, p99 "
        f"{_n(f['lag_p99_s'])} s over {_n(f['evals_measured'])} evaluations (target "
        f"{_n(f['lag_target_s'])} s); converged {_n(f['converged_seconds'])} s after their last "
        f"event; rows differing from a run without the flooder {_n(f['rows_differing'])}, "
        f"jobs with different metric rows {_n(f['jobs_with_differing_metrics'])}. Processes "
        f"that exited: {_n(len(f['exited']))}.",
        f"- **Result**: {_lost(f)}.",
    ]


EXPERIMENTS: list[tuple[str, str, str, Callable[[Figures], list[str]]]] = [
    ("1-crash-anywhere", "1. Crash anywhere", "Nothing lost, nothing counted twice", crash),
    ("1b-default-timeouts", "1b. Crash with the default timeouts", "No lost wake-up", defaults),
    ("2-redis-outage-under-training", "2. Redis outage under training",
     "Training is never hurt", training),
    ("3-redis-restart", "3. Redis restarts under the workers", "No lost wake-up", restart),
    ("4-sink-outage", "4. Sink outage", "The sink converges", sink_outage),
    ("5-bad-input", "5. Bad input", "Bad input is contained", bad_input),
    ("6-7-poison-and-operator-tools", "6 and 7. Poison event, operator tools",
     "Bad input is contained", poison),
    ("8-flood", "8. A flooding pod", "One pod cannot hurt another", flood),
    ("1-crash-anywhere-cluster", "9. Crash anywhere, data on a Redis Cluster",
     "Nothing lost, nothing counted twice", crash_on_a_cluster),
    ("6-cluster-failover", "10. A cluster master killed under load",
     "No state goes backwards; what a failover loses is counted", cluster_failover),
    ("11-sentinel-failover-separate", "11. Sentinel failover of the queue side",
     "No lost wake-up", sentinel_failover),
    ("11-sentinel-failover-queue", "11b. Sentinel failover, the data on the same primary",
     "No lost wake-up", sentinel_failover),
    ("13-network-training", "13. A slow, lossy, then blackholed link under training",
     "Training is never hurt", network_training),
    ("14-network-workers", "14. The pump and the workers blackholed from Redis",
     "No lost wake-up", network_workers),
    ("15-network-sink", "15. The sink blackholed from PostgreSQL mid-transaction",
     "The sink converges", network_sink),
    ("16-full-disk", "16. A full spool disk under training",
     "Memory stays bounded; what a full disk loses is counted", full_disk),
]  # fmt: skip


def render(results: dict[str, Any]) -> str:
    experiments = results.get("experiments", {})
    recorded = sorted(f.get("recorded_at", "") for f in experiments.values())
    machine = next((f.get("machine") for f in experiments.values() if f.get("machine")), "")
    lines = [
        "# Reliability",
        "",
        "DESIGN section 6 promises that training is never hurt, nothing is lost or counted "
        "twice, no wake-up is lost, the sink converges and bad input is contained. Each "
        "promise is an experiment with real processes and real servers "
        "(`tests/chaos/`, marked `chaos`, run by `.ci/run`):",
        "",
        "```",
        "python -m pytest -m chaos                          # about 15 minutes on 2 cores",
        "python -m tests.chaos.report chaos-results.json    # this file",
        "```",
        "",
        f"Figures of the last run: {recorded[0] if recorded else '?'} to "
        f"{recorded[-1] if recorded else '?'}, {machine}.",
        "",
        "| experiment | promise | lost | counted twice | converged after the last fault |",
        "|---|---|---|---|---|",
    ]
    for key, title, promise, _ in EXPERIMENTS:
        f = experiments.get(key)
        if f is None:
            lines.append(f"| {title} | {promise} | not run | | |")
            continue
        seconds = next(
            (f[k] for k in ("converged_seconds_after_last_fault",
                            "converged_seconds_after_failover",
                            "converged_seconds_after_postgres_returned",
                            "converged_seconds_after_heal", "delivered_seconds_after_heal",
                            "scoring_converged_seconds", "converged_seconds") if k in f),
            "?",
        )  # fmt: skip
        lines.append(
            f"| {title} | {promise} | {_n(f.get('lost', '?'))} | "
            f"{_n(f.get('duplicates', '?'))} | {_n(seconds)} s |"
        )
    for key, title, promise, describe in EXPERIMENTS:
        lines += ["", f"## {title}", "", f"*{promise}.*", ""]
        f = experiments.get(key)
        lines += describe(f) if f is not None else ["Not run in the last run."]
    lines += ["", "## How the faults are made", "", METHOD, "## Not covered", "", NOT_COVERED]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default=str(REPO / "chaos-results.json"))
    parser.add_argument("-o", "--output", default=str(REPO / "RELIABILITY.md"))
    args = parser.parse_args()
    text = render(json.loads(Path(args.results).read_text()))
    Path(args.output).write_text(text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
