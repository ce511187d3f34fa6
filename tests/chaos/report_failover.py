"""The RELIABILITY.md section of the Sentinel failover experiment
(``tests/chaos/test_sentinel_failover.py``), rendered by :mod:`tests.chaos.report`."""

from __future__ import annotations

from .report_text import Figures, _lost, _n


def sentinel_failover(f: Figures) -> list[str]:
    """The section's lines, from the figures the experiment recorded."""
    data = (
        "on a plain `redis-server` of its own (`CKPT_DATA_REDIS_URL`), which the failover does "
        "not touch"
        if f["data_side"] == "separate"
        else "on the same sentinel-managed primary (`CKPT_DATA_REDIS_URL` unset): the events, "
        "states and rows' versions fail over with the queues (the harness publishes through a "
        "sentinel client; `producer/` has no sentinel form)"
    )
    queued = f["tasks_waiting_in_rq_at_kill"]
    intro = [
        "Run: `python -m pytest -m chaos tests/chaos/test_sentinel_failover.py` (both variants, "
        "about 40 s on 2 cores; `DATA_SIDES` in the file picks them). Every process opens the "
        "queue side through `scorer_worker.sentinel`: the first version of this experiment "
        "found idle workers stuck for the whole `CKPT_REDIS_RETRY_S` (60 s) on the dead "
        "primary's address, because redis-py's sentinel connection reconnects a retried "
        "command to the address it had (redis-py issue #3874), and their SIGTERM shutdown hung "
        "on the reply of the interrupted `BLMOVE`; `PrimaryFollowingConnection` asks the "
        "sentinels on every reconnect and drops an interrupted connection.",
        "",
    ]
    shared = [
        "",
        "Replication is asynchronous: a write the old primary acknowledged in the moment before "
        "the kill and had not yet sent is gone. On loopback the replica trails by microseconds, "
        "so this run lost nothing; across a network it can lose events (for good) and state "
        "commits (their versions go back and are drained again; the sink's version guard then "
        "skips writes until the version passes the row's). The experiment counts both and "
        "allows row differences only for the jobs they hit. A data side of its own "
        "(`CKPT_DATA_REDIS_URL`, experiment 11) keeps events and states out of the queue "
        "side's failover; `CKPT_DATA_WAIT_REPLICAS` makes state commits wait for a replica.",
    ]
    return [
        *(intro if f["data_side"] == "separate" else []),
        f"The queue side is a primary, a replica and 3 sentinels (`REDIS_URL=redis+sentinel://"
        f"...`, `down-after-milliseconds` 1000, replication asynchronous, AOF everysec); the data "
        f"side is {data}. {_n(f['jobs'])} jobs publish {_n(f['events_published'])} events in "
        f"rounds while 1 pump, 2 `rq worker scoring` and 2 `rq worker sink` (the Procfile's "
        f"commands) work them off ({f['slow_row_writes']}, so sink tasks wait in RQ); the primary "
        f"is SIGKILLed mid-run.",
        "",
        f"- **Failover**: every sentinel named the promoted replica "
        f"{_n(f['replica_promoted_seconds_after_kill'])} s after the kill; the first task "
        f"started on the new primary "
        f"{_n(f['first_task_started_on_new_primary_seconds_after_kill'])} s after it, the first "
        f"task enqueued there {_n(f['first_enqueue_on_new_primary_seconds_after_kill'])} s after "
        f"it; the publisher's longest round {_n(f['publisher_longest_round_seconds'])} s. "
        f"Processes restarted: {_n(len(f['processes_restarted']))}; exited by themselves: "
        f"{_n(len(f['processes_that_exited_by_themselves']))} (same PIDs before and after).",
        f"- **Queue side**: {_n(queued.get('scoring', 0))} scoring and {_n(queued.get('sink', 0))} "
        f"sink tasks waited in RQ at the kill; {_n(f['tasks_enqueued'])} tasks enqueued in all. "
        f"Lost queue entries (enqueued, acknowledged, never run): {_n(f['queue_entries_lost'])} "
        f"({_n(f['queue_entries_lost_enqueued_before_kill'])} enqueued before the kill); tasks "
        f"run twice: {_n(f['tasks_run_twice'])}; jobs enqueued again while a task for them still "
        f"waited (the lost-marker case): {_n(f['jobs_reenqueued_while_a_task_waited_after_kill'])} "
        f"after the kill, {_n(f['jobs_reenqueued_while_a_task_waited_before_kill'])} before.",
        f"- **Data**: events acknowledged and lost {_n(f['events_lost'])} (in "
        f"{_n(f['jobs_with_lost_events'])} jobs; from each stream's `entries-added`); XADDs found "
        f"already applied when the publisher retried {_n(f['xadds_already_applied_when_retried'])}"
        f"; state versions seen going backwards {_n(f['state_versions_regressed'])}; dead letters "
        f"{_n(f['dead_letters'])}.",
        f"- **Converged** {_n(f['converged_seconds_after_promotion'])} s after the promotion "
        f"({_n(f['converged_seconds_after_last_fault'])} s after the kill). Rows against a "
        f"fault-free run: {_n(f['rows_differing'])} differ, {_n(f['rows_missing'])} missing, "
        f"{_n(f['jobs_with_differing_metrics'])} with different metric rows "
        f"({_n(f['metric_rows_compared'])} compared); differing without lost data to explain "
        f"it: {_n(f['rows_differing_unexplained_by_lost_data'])}.",
        f"- **Result**: {_lost(f)} (rows against the fault-free run).",
        *(shared if f["data_side"] == "queue" else []),
    ]
