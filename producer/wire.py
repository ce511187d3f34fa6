"""Wire contract constants (DESIGN section 3), shared by producers and the scorer.

This module is standard library only so that it can be embedded in a pod script.
"""

from __future__ import annotations

import re
from typing import Any

WIRE_VERSION = 1
EVENT_FIELD = "event"
MAX_EVENT_BYTES = 64 * 1024
MAX_LIST_ITEMS = 1000  # items of a list in ``info`` (e.g. ``retained``); producers keep the newest

TRAIN_BEGIN = "train_begin"
TRAIN_LOG = "train_log"
EVAL = "eval"
CHECKPOINT_SAVED = "checkpoint_saved"
TRAIN_END = "train_end"
KINDS = (TRAIN_BEGIN, TRAIN_LOG, EVAL, CHECKPOINT_SAVED, TRAIN_END)  # what a training run says
# The publisher's own report, not a training fact: ``info.instance`` (the publisher's random
# id, INSTANCE_ID_HEX hex digits) and ``info.lost`` (how many events that publisher dropped
# so far, cumulative). Sent with step 0, ahead of the publisher's other events, whenever the
# count grew; the scorer keeps the largest count per instance, so re-deliveries add nothing
# and each restart of a training process (a new instance) adds its own.
EVENTS_LOST = "events_lost"
WIRE_KINDS = (*KINDS, EVENTS_LOST)  # every kind the scorer accepts
INSTANCE_ID_HEX = 32

END_STATUSES = ("completed", "failed", "cancelled")  # the finished statuses of a job

JOB_ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
_JOB_ID_RE = re.compile(JOB_ID_PATTERN)
CHECKPOINT_PREFIX = "checkpoint-"
# Steps go to PostgreSQL integer columns: a larger one would make the row unwritable for good.
MAX_STEP = 2**31 - 1
_CHECKPOINT_RE = re.compile(rf"{CHECKPOINT_PREFIX}([0-9]{{1,10}})")


def is_valid_job_id(job_id: object) -> bool:
    """Return True when ``job_id`` is 1 to 64 characters of ``[A-Za-z0-9_-]``."""
    # fullmatch: re's "$" would also accept a trailing newline ("job\n").
    return isinstance(job_id, str) and _JOB_ID_RE.fullmatch(job_id) is not None


def stream_key(job_id: str) -> str:
    """Return the Redis stream key of a job: ``ckpt:{<job_id>}:events``.

    Raises:
        ValueError: if ``job_id`` is not a valid job id.
    """
    if not is_valid_job_id(job_id):
        raise ValueError(f"invalid job id {job_id!r}: expected 1-64 of [A-Za-z0-9_-]")
    return f"ckpt:{{{job_id}}}:events"


def decision_key(job_id: str) -> str:
    """Return the key of a job's decision: ``ckpt:{<job_id>}:decision`` (a hash).

    The scorer writes it in the same atomic commit as the job's state; the job's pod may only
    read it (``HMGET``). Its fields are the ``DECISION_*`` names below and, per scored
    evaluation, ``score:<step>`` (see :func:`decision_field`).

    Raises:
        ValueError: if ``job_id`` is not a valid job id.
    """
    return stream_key(job_id)[: -len(":events")] + ":decision"


# Fields of the decision hash. Numbers are written with repr(); "" means none.
DECISION_VERSION = "version"  # the state version of the commit that wrote the decision
DECISION_BEST_STEP = "best_step"
DECISION_BEST_CHECKPOINT = "best_checkpoint"  # "checkpoint-N", "" while nothing was saved
DECISION_BEST_SCORE = "best_score"
DECISION_EVALS = "evals"  # evaluations scored
DECISION_EVALS_SINCE_BEST = "evals_since_best"
DECISION_SCORE_PREFIX = "score:"


def decision_field(step: int) -> str:
    """Return the decision field holding the score of the evaluation at ``step``."""
    return f"{DECISION_SCORE_PREFIX}{step}"


def encode_decision_entry(score: float, eval_loss: float | None) -> str:
    """Encode an evaluation's score with the eval loss it was computed from: ``score,loss``.

    The loss lets a producer check that a score covers *its* evaluation (a resumed attempt
    may evaluate a step again). ``repr`` round-trips every float, NaN and infinities included.
    """
    return f"{score!r},{'' if eval_loss is None else repr(float(eval_loss))}"


def decode_decision_entry(raw: str | bytes) -> tuple[float, float | None]:
    """Decode what :func:`encode_decision_entry` wrote.

    Raises:
        ValueError: if ``raw`` is not of that form.
    """
    text = as_text(raw)
    score, _, loss = text.partition(",")
    return float(score), (float(loss) if loss else None)


def job_of_stream_key(key: str) -> str | None:
    """Return the job id inside a stream key, or None when ``key`` is not a job stream."""
    if key.startswith("ckpt:{") and key.endswith("}:events"):
        job_id = key[len("ckpt:{") : -len("}:events")]
        return job_id if is_valid_job_id(job_id) else None
    return None


def checkpoint_step(name: str) -> int | None:
    """Return N for a folder named ``checkpoint-N`` (ASCII digits, N <= MAX_STEP), else None.

    ``str.isdigit`` is not enough: it accepts ``²`` and other scripts' digits, which ``int``
    then refuses or reads as another number.
    """
    found = _CHECKPOINT_RE.fullmatch(name) if isinstance(name, str) else None
    if found is None or int(found.group(1)) > MAX_STEP:
        return None
    return int(found.group(1))


def is_finished(status: object) -> bool:
    """Return True when ``status`` is one of :data:`END_STATUSES` (a job that ended)."""
    return status in END_STATUSES


def as_text(value: Any, errors: str = "strict") -> Any:
    """Return ``value`` decoded from UTF-8 when it is bytes (a Redis reply), else unchanged.

    Args:
        value: A Redis reply item (bytes without ``decode_responses``), or anything else.
        errors: How undecodable bytes are handled (``"backslashreplace"`` for payloads that
            come from pods and must be shown, not trusted).
    """
    return value.decode("utf-8", errors=errors) if isinstance(value, bytes) else value
