"""What an operator asks of a job's pod: ``remote status`` and ``remote stop`` (by hand)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from . import pod_record as rec
from .lifecycle import GONE, LifecycleError, PodLifecycle
from .pod_record import PodView, read_view
from .runpod import RunPodError


def stop_by_hand(lifecycle: PodLifecycle, job_id: str, action: str) -> str:
    """``ckpt-pipeline remote stop``: apply ``action`` now, whatever the job's state.

    If the job was still running, the next poll sees the pod stopped and ends the job
    ``cancelled``.

    Raises:
        LifecycleError: when the job has no recorded pod.
        RunPodError: when RunPod did not accept the action (the attempt is recorded).
    """
    view = read_view(lifecycle.redis, job_id)
    if view.pod_id is None:
        raise LifecycleError(f"job {job_id} has no RunPod pod recorded")
    result = lifecycle.apply_on_end(view, action, by_hand=True)
    if not view.job_ended:
        # Read the pod at the next scan, and keep the job managed until its end is written.
        rec.update(lifecycle.redis, job_id, {rec.NEXT_POLL_AT: repr(lifecycle.clock())})
        lifecycle.redis.sadd(rec.PODS_KEY, job_id)
    return result


def status_report(lifecycle: PodLifecycle, job_id: str) -> dict[str, Any]:
    """What ``ckpt-pipeline remote status`` shows: the pod, RunPod's view, ``on_end``.

    RunPod's answer is reduced to fields without secrets (it echoes the pod's environment).
    """
    view = read_view(lifecycle.redis, job_id)
    report: dict[str, Any] = {"job_id": job_id, "pod_id": view.pod_id}
    if view.pod_id is None:
        return report
    try:
        pod = lifecycle.client(view).get_pod(view.pod_id)
        runpod = _safe_pod(pod) if pod else {"status": GONE, "note": "RunPod: not found (404)"}
    except (RunPodError, LifecycleError) as exc:
        runpod = {"status": None, "error": str(exc)}
    report |= {
        "api_url": view.get(rec.API_URL),
        "gpu_type": view.get(rec.GPU_TYPE),
        "launched_at": _iso(view.get(rec.LAUNCHED_AT)),
        "runpod": runpod,
        "last_seen": {"status": view.get(rec.STATUS), "at": _iso(view.get(rec.STATUS_AT))},
        "job": {
            "status": view.get("status") or "pending",
            "version": int(view.number("version")),
            "written_version": int(view.number("written_version")),
        },
        "ended_by_trusted_side": view.get(rec.FAILURE_REPORTED),
        "on_end": on_end_state(view),
    }
    return report


def on_end_state(view: PodView) -> dict[str, Any]:
    """Return the ``on_end`` action's state: waiting, due, retrying or done."""
    attempts = int(view.number(rec.ON_END_ATTEMPTS))
    if view.on_end_done:
        state = "done"
    elif not view.job_ended:
        state = "waiting for the job's end to be written"
    else:
        state = "retrying" if attempts else "due"
    return {
        "action": view.on_end,
        "state": state,
        "result": view.get(rec.ON_END_RESULT),
        "done_at": _iso(view.get(rec.ON_END_DONE_AT)),
        "attempts": attempts,
        "next_attempt_at": _iso(view.get(rec.ON_END_NEXT_AT)) if not view.on_end_done else None,
        "last_error": view.get(rec.ON_END_ERROR),
    }


SAFE_POD_FIELDS = ("id", "name", "status", "actions", "gpu", "cloud", "dataCenterId", "cost")


def _safe_pod(pod: dict[str, Any]) -> dict[str, Any]:
    return {name: pod.get(name) for name in SAFE_POD_FIELDS if name in pod}


def _iso(stamp: str | None) -> str | None:
    if not stamp:
        return None
    return datetime.fromtimestamp(float(stamp), UTC).isoformat(timespec="seconds")
