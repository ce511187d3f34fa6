"""What ``ckpt-pipeline status`` reports: the row and the pipeline state, never secrets."""

from __future__ import annotations

import json
import os
from typing import Any

from producer.redaction import redact_value
from producer.wire import DECISION_SCORE_PREFIX, as_text
from scorer_worker import keys
from scorer_worker.deadletter import list_dead_letters
from scorer_worker.keys import JobMeta
from scorer_worker.registry import job_secrets
from scorer_worker.settings import Settings
from scorer_worker.store import load_state

SECRET_FIELDS = ("token", "job_token", "pod_password")


def pipeline_state(redis: Any, job_id: str, queue: Any = None) -> dict[str, Any]:
    """Return the job's lag, versions, dead letters and sink errors."""
    meta = JobMeta.from_hash(redis.hgetall(keys.meta(job_id)))
    state = load_state(redis, job_id)
    version, written = state.version, meta.written_version
    stalled = meta.stalled_since if not state.end else None
    letters = list_dead_letters(redis, count=5, job_id=job_id)
    lost = state.events_lost_total
    return {
        "registered": bool(meta.token),
        "active": bool((queue if queue is not None else redis).sismember(keys.JOBS, job_id)),
        "lag_events": int(redis.xlen(keys.events(job_id))),
        "cursor": state.cursor,
        "state_version": version,
        "written_version": written,
        "lag_versions": max(0, version - written),
        "evals": len(state.evals),
        "dead_letters": state.dead_letters,
        "recent_dead_letters": [f"{entry_id}: {letter.reason}" for entry_id, letter in letters],
        "events_lost": lost,
        **({"events_lost_note": events_lost_note(lost)} if lost else {}),
        "sink_error": meta.sink_error,
        "sink_error_kind": meta.sink_error_kind,
        "cut_off": meta.cut_off,
        "stalled_since": None if stalled is None else repr(stalled),  # as stored
        "decision": decision_header(redis, job_id),
    }


def events_lost_note(lost: int) -> str:
    """Say what ``lost`` events reported lost by the job's producers mean for its row."""
    return (
        f"{lost} events of this job never reached the pipeline: its training process dropped "
        "them (memory queue full while Redis was unreachable and the spool disk full or "
        "failing), so the row and its best checkpoint were computed without them"
    )


def decision_header(redis: Any, job_id: str) -> dict[str, str] | None:
    """Return the decision the job's producer reads, without its per-step scores."""
    fields = {as_text(k): as_text(v) for k, v in redis.hgetall(keys.decision(job_id)).items()}
    header = {k: v for k, v in fields.items() if not k.startswith(DECISION_SCORE_PREFIX)}
    return header or None


def picks(row: dict[str, Any]) -> dict[str, Any]:
    """Return the row's multi-metric pick beside the eval-loss-only pick kept for comparison."""
    breakdown = row.get("best_score_breakdown")
    if isinstance(breakdown, str):
        breakdown = json.loads(breakdown)
    multi = None
    if row.get("best_checkpoint_step") is not None or row.get("best_step") is not None:
        multi = {
            "step": row.get("best_step"),
            "epoch": row.get("best_epoch"),
            "eval_loss": row.get("best_eval_loss"),
            "score": row.get("best_checkpoint_score"),
            "path": row.get("best_checkpoint_path"),
        }
    return {"multi_metric": multi, "eval_loss_only": (breakdown or {}).get("eval_loss_pick")}


def job_status(settings: Settings, redis: Any, job_id: str, queue: Any = None) -> dict[str, Any]:
    """Return ``{"pipeline": ..., "row": ...}`` for ``job_id``; the row is None if absent.

    ``redis`` is the data side; ``queue`` the queue side (``redis`` itself by default).

    Everything in it is redacted: the job's token and pod password, the RunPod API key of
    this process, and any URL password (an error message may quote a connection string).
    """
    report = _job_status(settings, redis, job_id, queue)
    secrets = (*job_secrets(redis, job_id), os.environ.get("RUNPOD_API_KEY"))
    return redact_value(report, secrets)


def _job_status(settings: Settings, redis: Any, job_id: str, queue: Any) -> dict[str, Any]:
    from sink.writers import writer_from_settings

    report: dict[str, Any] = {"pipeline": pipeline_state(redis, job_id, queue), "row": None}
    writer = writer_from_settings(settings)
    try:
        row = writer.read_job(job_id)
    finally:
        writer.close()
    if row is not None:
        report["row"] = {k: v for k, v in row.items() if k not in SECRET_FIELDS}
        report["picks"] = picks(row)
    return report
