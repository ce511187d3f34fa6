"""Pydantic models of the wire contract, version 1: the schema of record (DESIGN section 3)."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from producer.wire import (
    CHECKPOINT_PREFIX,
    END_STATUSES,
    EVENT_FIELD,
    EVENTS_LOST,
    INSTANCE_ID_HEX,
    JOB_ID_PATTERN,
    MAX_EVENT_BYTES,
    MAX_LIST_ITEMS,
    MAX_STEP,
    WIRE_VERSION,
)

from .errors import InvalidEvent

# What the wire's non-finite spellings mean (DESIGN section 3: the scorer decides).
NON_FINITE_SPELLINGS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

CHECKPOINT_PATTERN = rf"^{CHECKPOINT_PREFIX}[0-9]+$"
MAX_RETAINED = MAX_LIST_ITEMS  # checkpoint names in one checkpoint_saved


# Numbers are checked by pydantic-core itself (no Python call per value: this is the hot
# path of every event): strict floats refuse bools and numeric strings; a non-finite value
# travels as one of the strings below.
FiniteNumber = Annotated[float, Strict(), Field(allow_inf_nan=False)]
_SpecialNumber = Annotated[
    Literal["nan", "inf", "-inf"], AfterValidator(NON_FINITE_SPELLINGS.__getitem__)
]
WireNumber = FiniteNumber | _SpecialNumber | None
EndStatus = Literal[END_STATUSES]  # type: ignore[valid-type]  # the wire's finished statuses
_NUMBER_TAGS = ("float", "function-after[")  # how pydantic names WireNumber's union members
# Bounds every row can hold: steps and counts go to PostgreSQL integer columns, epochs to one
# (best_checkpoint_epoch), timestamps must be datetimes (year 9999 at most). A value beyond
# them would make the job's row unwritable for good, so the event is refused instead.
MAX_ROW_INT = MAX_STEP
MAX_TS = 253_402_300_799.0  # 9999-12-31T23:59:59Z
Count = Annotated[int, Field(strict=True, ge=0, le=MAX_ROW_INT)]
Epoch = Annotated[FiniteNumber, Field(ge=0, le=MAX_ROW_INT)]
Timestamp = Annotated[FiniteNumber, Field(ge=0, le=MAX_TS)]


class _Info(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class TrainBeginInfo(_Info):
    """``info`` of ``train_begin``."""

    max_steps: Count | None = None
    num_train_epochs: Annotated[FiniteNumber, Field(ge=0)] | None = None
    resumed_from_step: Count | None = None
    save_total_limit: Annotated[int, Field(strict=True)] | None = None
    output_dir: Annotated[str, Field(max_length=1024)] | None = None


class CheckpointInfo(_Info):
    """``info`` of ``checkpoint_saved``: the folder saved, the folders left after rotation."""

    checkpoint: Annotated[str, Field(pattern=CHECKPOINT_PATTERN)]
    # Capped: a real run keeps a few checkpoints; the state keeps only the latest list.
    retained: Annotated[
        list[Annotated[str, Field(pattern=CHECKPOINT_PATTERN)]], Field(max_length=MAX_RETAINED)
    ] = []


class TrainEndInfo(_Info):
    """``info`` of ``train_end``."""

    status: EndStatus = "completed"
    error: Annotated[str, Field(max_length=8000)] | None = None


class EventsLostInfo(_Info):
    """``info`` of ``events_lost``: a publisher's cumulative count of the events it dropped."""

    instance: Annotated[str, Field(pattern=rf"^[0-9a-f]{{{INSTANCE_ID_HEX}}}$")]
    lost: Count


_INFO_MODELS: dict[str, type[_Info]] = {
    "train_begin": TrainBeginInfo,
    "checkpoint_saved": CheckpointInfo,
    "train_end": TrainEndInfo,
    EVENTS_LOST: EventsLostInfo,
}


class WireEvent(BaseModel):
    """One event as published on ``ckpt:{<job>}:events``; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1]
    job_id: Annotated[str, Field(pattern=rf"^{JOB_ID_PATTERN}$")]
    kind: Literal[
        "train_begin", "train_log", "eval", "checkpoint_saved", "train_end", "events_lost"
    ]
    step: Count
    epoch: Epoch | None = None
    ts: Timestamp
    metrics: dict[str, WireNumber] = {}
    info: Any = Field(default=None, validate_default=True)  # a missing info is validated too

    @field_validator("info", mode="before")
    @classmethod
    def _typed_info(cls, value: Any, context: ValidationInfo) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ValueError("info must be an object")
        model = _INFO_MODELS.get(context.data.get("kind", ""))
        return model.model_validate(value) if model else value


_VALIDATE_JSON = WireEvent.__pydantic_validator__.validate_json


def decode_event(raw: bytes | str, stream_job_id: str) -> WireEvent:
    """Decode and validate one stream entry's ``event`` field.

    Args:
        raw: the field's bytes (or text).
        stream_job_id: the job named by the stream key; the payload must name the same job.

    Raises:
        InvalidEvent: with a readable reason and the raw payload.
    """
    # Stream values arrive as bytes: the common case encodes nothing.
    text = raw if isinstance(raw, bytes) else raw.encode("utf-8", errors="replace")
    if len(text) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"payload of {len(text)} bytes exceeds {MAX_EVENT_BYTES}", raw)
    event = None
    if b"NaN" not in text and b"Infinity" not in text:  # pydantic's parser accepts bare NaN
        # Fast path: pydantic-core parses and validates in one pass, called directly (the
        # model_validate_json wrapper costs a microsecond per event on a slow core; a plain
        # try: a context manager per event costs more than the check it guards).
        try:  # noqa: SIM105
            event = _VALIDATE_JSON(text)
        except ValueError:
            pass  # the slow path says precisely what is wrong
    if event is not None and event.v == WIRE_VERSION:
        if event.job_id != stream_job_id:
            raise InvalidEvent(
                f"job_id {event.job_id!r} does not match stream job {stream_job_id!r}", raw
            )
        return event
    try:
        payload = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"malformed JSON: {exc}", raw) from None
    if not isinstance(payload, dict):
        raise InvalidEvent("event is not a JSON object", raw)
    if payload.get("v", WIRE_VERSION) != WIRE_VERSION and isinstance(payload.get("v"), int):
        raise InvalidEvent(f"unsupported wire version {payload['v']}", raw)
    try:
        event = WireEvent.model_validate(payload)
    except ValidationError as exc:
        raise InvalidEvent(_summarize(exc), raw) from None
    if event.job_id != stream_job_id:
        raise InvalidEvent(
            f"job_id {event.job_id!r} does not match stream job {stream_job_id!r}", raw
        )
    return event


_EVENT_KEY = EVENT_FIELD.encode()


def decode_entry(fields: dict[Any, Any], stream_job_id: str) -> WireEvent:
    """Decode a stream entry's field map (which must hold the ``event`` field).

    Raises:
        InvalidEvent: when the field is missing or its payload is invalid.
    """
    raw = fields.get(_EVENT_KEY) or fields.get(EVENT_FIELD)
    if raw is None or len(fields) != 1:
        names = sorted(_shown(k) for k in fields)[:10]
        what = f"no {EVENT_FIELD!r} field" if raw is None else "more fields than one"
        raise InvalidEvent(f"entry has {what} (fields: {names})", _capped(fields))
    return decode_event(raw, stream_job_id)


def entry_bytes(fields: dict[Any, Any]) -> int:
    """Return the size of a stream entry: every field name and value counted."""
    return sum(len(_as_bytes(k)) + len(_as_bytes(v)) for k, v in fields.items())


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8", errors="replace")


def _shown(name: Any) -> str:
    return _as_bytes(name)[:40].decode("utf-8", errors="backslashreplace")


def _capped(fields: dict[Any, Any]) -> bytes:
    # What a dead letter keeps of a malformed entry: never more than the event cap.
    return b"\n".join(_as_bytes(k)[:64] + b"=" + _as_bytes(v)[:256] for k, v in fields.items())[
        :MAX_EVENT_BYTES
    ]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"bare {name} is not JSON; send it as a string")


def _summarize(exc: ValidationError) -> str:
    parts: dict[str, str] = {}
    for error in exc.errors():
        loc = [str(item) for item in error["loc"]]
        message = error["msg"]
        if loc[:1] == ["metrics"] and len(loc) == 3 and loc[2].startswith(_NUMBER_TAGS):
            # One message per metric, not one per member of WireNumber's union.
            loc, message = loc[:2], "expected a number, null, or one of 'nan', 'inf', '-inf'"
        parts.setdefault(".".join(loc) or "event", message)
    shown = [f"{where}: {message}" for where, message in list(parts.items())[:5]]
    return "invalid event: " + "; ".join(shown)
