"""What the trusted side remembers of a job's pod, in the job's meta hash.

The launch records the pod (id, API, GPU type, the spec's ``on_end``) in ``ckpt:{<job>}:meta``
and adds the job to ``ckpt:pods``, the jobs whose pod still needs the trusted side: watching
for a pod that dies mid-run, and applying ``on_end`` once the job's end is scored and written.
Pods cannot read either key (their Redis user may touch only their stream and decision). The
attempts, the next attempt time and the last error are kept there too, so a restarted pump
carries on where the last one stopped (level-triggered, like the rest of the pump).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from producer.wire import END_STATUSES, as_text, stream_key

PODS_KEY = "ckpt:pods"
"""Set of the job ids whose pod the trusted side still manages."""

ON_END_ACTIONS = ("stop", "terminate", "keep")
"""What happens to the pod when its job ends: ``stop`` (GPU billing ends, the volume keeps
the checkpoints), ``terminate`` (the pod and its volume are deleted), ``keep`` (nothing)."""

DEFAULT_ON_END = "stop"

# Meta fields (trusted side only).
POD_ID = "runpod_pod_id"
API_URL = "runpod_api_url"
GPU_TYPE = "runpod_gpu_type"
LAUNCHED_AT = "runpod_launched_at"
ON_END = "runpod_on_end"
STATUS = "runpod_status"  # RunPod's PodStatus as last seen
STATUS_AT = "runpod_status_at"
NEXT_POLL_AT = "runpod_next_poll_at"
POLL_ERROR = "runpod_poll_error"
FAILURE_REPORTED = "runpod_failure_reported"  # the reason the trusted side ended the job with
STOPPED_BY_HAND = "runpod_stopped_by_hand"  # the action `remote stop` applied
ON_END_ATTEMPTS = "on_end_attempts"
ON_END_NEXT_AT = "on_end_next_at"
ON_END_ERROR = "on_end_error"
ON_END_DONE_AT = "on_end_done_at"
ON_END_RESULT = "on_end_result"
LIFECYCLE_FIELDS = (
    POD_ID, API_URL, GPU_TYPE, LAUNCHED_AT, ON_END, STATUS, STATUS_AT, NEXT_POLL_AT,
    POLL_ERROR, FAILURE_REPORTED, STOPPED_BY_HAND, ON_END_ATTEMPTS, ON_END_NEXT_AT,
    ON_END_ERROR, ON_END_DONE_AT, ON_END_RESULT,
)  # fmt: skip

# Written by the scorer's state commit and by the sink (read here, never written). A version
# the sink refused for good (wrong token, missing row) will not be written: the job is over.
JOB_FIELDS = ("status", "version", "written_version", "refused_version")


def meta_key(job_id: str) -> str:
    """The job's meta hash: the same key as ``scorer_worker.keys.meta`` (remote must not
    import the scorer; a test checks that the two agree)."""
    return f"ckpt:{{{job_id}}}:meta"


def check_on_end(value: Any) -> str:
    """Return ``value`` if it is one of :data:`ON_END_ACTIONS`.

    Raises:
        ValueError: naming the field and the accepted values.
    """
    if value not in ON_END_ACTIONS:
        accepted = ", ".join(ON_END_ACTIONS)
        raise ValueError(f"spec field 'on_end' must be one of {accepted}: {value!r}")
    return value


def split_launch_fields(spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Return ``(training spec, on_end)``: ``on_end`` is for the trusted side, not the pod.

    A JSON ``null`` means "not set", so it gives the default.
    """
    training = dict(spec)
    on_end = training.pop("on_end", None)
    return training, check_on_end(DEFAULT_ON_END if on_end is None else on_end)


@dataclass(frozen=True)
class PodView:
    """One consistent reading of a job's pod record and its job's levels."""

    job_id: str
    fields: dict[str, str]
    undrained: int

    def get(self, name: str) -> str | None:
        """Return a meta field, or None."""
        return self.fields.get(name) or None

    def number(self, name: str) -> float:
        """Return a numeric meta field, 0 when absent."""
        return float(self.fields.get(name) or 0)

    @property
    def pod_id(self) -> str | None:
        """RunPod's id of the job's pod."""
        return self.get(POD_ID)

    @property
    def on_end(self) -> str:
        """The spec's ``on_end``."""
        return self.get(ON_END) or DEFAULT_ON_END

    @property
    def job_finished(self) -> bool:
        """True when the scorer folded the job's ``train_end``."""
        return self.get("status") in END_STATUSES

    @property
    def job_ended(self) -> bool:
        """True when the job's end is scored and its row written (or refused for good by the
        sink): time for ``on_end``."""
        version = self.number("version")
        settled = max(self.number("written_version"), self.number("refused_version"))
        return self.job_finished and version > 0 and settled >= version

    @property
    def on_end_done(self) -> bool:
        """True when ``on_end`` was applied (or ``remote stop`` did it by hand)."""
        return self.get(ON_END_DONE_AT) is not None


def read_view(redis: Any, job_id: str) -> PodView:
    """Read the job's pod record, job levels and undrained events in one transaction."""
    names = (*LIFECYCLE_FIELDS, *JOB_FIELDS)
    pipe = redis.pipeline(transaction=True)
    pipe.hmget(meta_key(job_id), names)
    pipe.xlen(stream_key(job_id))
    values, undrained = pipe.execute()
    fields = {n: as_text(v) for n, v in zip(names, values, strict=True) if v is not None}
    return PodView(job_id, fields, int(undrained))


def record_launch(
    redis: Any, job_id: str, pod: dict[str, Any], *, on_end: str, api_url: str, gpu_type: str,
    now: float, next_poll_at: float,
) -> None:  # fmt: skip
    """Record the created ``pod`` with the job, replacing any earlier pod's record."""
    pipe = redis.pipeline(transaction=True)
    pipe.hdel(meta_key(job_id), *LIFECYCLE_FIELDS)
    pipe.hset(
        meta_key(job_id),
        mapping={
            POD_ID: pod["id"],
            API_URL: api_url,
            GPU_TYPE: gpu_type,
            LAUNCHED_AT: repr(now),
            ON_END: check_on_end(on_end),
            STATUS: str(pod.get("status") or ""),
            STATUS_AT: repr(now),
            NEXT_POLL_AT: repr(next_poll_at),
        },
    )
    pipe.sadd(PODS_KEY, job_id)
    pipe.execute()


def update(redis: Any, job_id: str, fields: dict[str, Any], *, drop: tuple[str, ...] = ()) -> None:
    """Set (and delete) pod record fields of ``job_id``."""
    pipe = redis.pipeline(transaction=True)
    if fields:
        pipe.hset(meta_key(job_id), mapping={k: str(v) for k, v in fields.items()})
    if drop:
        pipe.hdel(meta_key(job_id), *drop)
    pipe.execute()
