"""RELIABILITY.md's section for the full-disk experiment (issue #16, part 4):
``tests/chaos/test_full_disk.py``, recorded as ``16-full-disk``."""

from __future__ import annotations

from .report_text import Figures, _n


def full_disk(f: Figures) -> list[str]:
    """A training process whose spool disk fills up while Redis is down."""
    kib = f.get("disk_bytes", 0) // 1024
    room = f.get("spool_room_bytes", 0) // 1024
    return [
        "A real `Trainer` (the tiny GPT-2 of the demo, a separate process) publishes through "
        f"`CheckpointEventsCallback` with its spool folder on a {_n(kib)} KiB tmpfs, "
        f"{_n(room)} KiB of it free (other files hold the rest), and its publisher's "
        f"`max_queue_events` lowered to {_n(f['max_queue_events'])} so that a short run "
        f"outgrows it. `redis-server` is stopped in the middle of training for "
        f"{_n(f['redis_down_seconds'])} s, until {_n(f['redis_back_seconds_after_training'])} s "
        "after training ended (the process waits in `close`). The scoring side starts after "
        "training, so the stream still holds every entry as delivered.",
        "",
        f"- **Training**: exit code {_n(f['trainer_exit_code'])}; {_n(f['steps'])} steps, "
        f"{_n(f['steps_during_outage'])} of them during the outage. Step time median "
        f"{_n(f['median_step_s_during'])} s during vs {_n(f['median_step_s_before'])} s before "
        f"it; max {_n(f['max_step_s_during'])} vs {_n(f['max_step_s_before'])} s. Longest of "
        f"{_n(f['publish_calls'])} `publish` calls: {f['publish_call_max_s'] * 1e6:.0f} µs.",
        f"- **Disk**: the spool was full {_n(f['spool_full_seconds_after_outage'])} s into the "
        f"outage at {_n(f['spool_max_bytes'])} bytes ({_n(f['events_spooled'])} events); a "
        "refused write is cut back off the file, so nothing torn reached Redis (no dead "
        f"letter), and the spool was gone after delivery ({_n(len(f['spool_left_files']))} "
        "files left).",
        f"- **Memory**: the in-memory queue peaked at {_n(f['memory_queue_max_events'])} "
        f"events (limit {_n(f['max_queue_events'])}); the process's resident memory went from "
        f"{_n(f['rss_at_outage_mb'])} MB at the outage to at most "
        f"{_n(f['rss_peak_during_outage_mb'])} MB during it. Beyond the limit the oldest "
        "events were dropped (the newest are what the row shows: the step, the latest "
        "checkpoints, the end).",
        f"- **Counted**: {_n(f['events_sent'])} events published, {_n(f['events_arrived'])} "
        f"arrived in Redis (each counted once), so {_n(f['events_lost'])} lost; the "
        f"publisher's `events_lost` report said {_n(f['events_lost_reported'])}, the row's "
        f"`events_lost` {_n(f['row_events_lost'])}, and `ckpt-pipeline status` "
        f"{_n(f['status_events_lost'])} (its row: {_n(f['status_row_events_lost'])}).",
        f"- **Row** against a fault-free run of the events that arrived: "
        f"{_n(f['rows_differing'])} differing, {_n(f['jobs_with_differing_metrics'])} with "
        f"different metric rows ({_n(f['metric_rows_compared'])} compared); dead letters "
        f"{_n(f['dead_letters'])}; the scoring side converged in "
        f"{_n(f['scoring_converged_seconds'])} s.",
        f"- **Result**: **{_n(f['lost'])} lost, every one counted ({_n(f['uncounted'])} not, "
        f"or rows that differ), {_n(f['duplicates'])} counted twice**.",
    ]
