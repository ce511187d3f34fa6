"""RELIABILITY.md's sections for the experiments past one server (issue #15): the crash
experiment with the data side on a Redis Cluster, and a cluster master's failover."""

from __future__ import annotations

from .report_text import Figures, _n


def crash_on_a_cluster(f: Figures) -> list[str]:
    """Experiment 1 again, with every job's data on a 3-master Redis Cluster."""
    from .report import crash  # here: report imports this module

    return [
        "Experiment 1 with every job's keys on a private **Redis Cluster** (3 masters, 3 "
        "replicas, `appendfsync everysec`, `CKPT_DATA_REDIS_URL`) and the queue side (RQ, "
        "job index, markers) on a plain server; the rows are compared with the same "
        "single-server fault-free run. Every chunked script runs one job per call there "
        "(the cluster refuses a call across slots), one pipeline per node.",
        "",
        *crash(f),
    ]


def cluster_failover(f: Figures) -> list[str]:
    """A master of the data side's cluster SIGKILLed under load; its replica takes over."""
    lost = f.get("acked_events_lost", "?")
    return [
        f"{_n(f['jobs'])} jobs x {_n(f['events_per_job'])} events are published through a "
        "cluster client in rounds (a pod's view: a round the cluster refused is sent again) "
        "while 1 pump, 2 `rq worker scoring` and 2 `rq worker sink` run with the data on a "
        "3-master cluster (3 replicas, `appendfsync everysec`, no `WAIT`, node timeout 1 s). "
        f"Halfway, the master holding the most jobs ({_n(f['jobs_on_the_killed_master'])}) "
        "is SIGKILLed. Nothing is restarted.",
        "",
        f"- **Failover**: its replica was promoted and the cluster was whole again "
        f"{_n(f['failover_seconds'])} s after the kill; the publisher sent "
        f"{_n(f['publisher_rounds_retried'])} rounds again meanwhile.",
        f"- **Acknowledged events lost**: {_n(lost)} (in {_n(f['jobs_with_lost_events'])} "
        "jobs). Replication is asynchronous: what the master acknowledged and had not sent "
        "to its replica when it died is gone, and the row then shows the job as if those "
        "events had never been sent (the next check). On one machine the replica is a "
        "loopback hop behind, so the loss is rarely above zero; across machines, or under "
        "load, expect up to the last moments' events of the jobs on that master. "
        "`CKPT_DATA_WAIT_REPLICAS` covers the state commits, not a pod's XADD.",
        f"- **Compared with** a fault-free run of the events that survived: "
        f"{_n(f['jobs_compared'])} job rows and {_n(f['metric_rows_compared'])} metric rows: "
        f"{_n(f['rows_differing'])} rows differ, {_n(f['rows_missing'])} missing, "
        f"{_n(f['jobs_with_differing_metrics'])} jobs with different metric rows, "
        f"{_n(f['duplicate_metric_rows'])} duplicate (job, step) rows; dead letters "
        f"{_n(f['dead_letters'])}.",
        f"- **No row went backwards**: {_n(f['rows_backwards'])} decreases of "
        f"`scoring_version` or `current_step` in {_n(f['row_polls'])} polls of every row.",
        f"- **Converged** {_n(f['converged_seconds_after_failover'])} s after the failover, "
        f"with the same processes (restarted or exited: "
        f"{_n(len(f['processes_restarted_or_exited']))}).",
    ]
