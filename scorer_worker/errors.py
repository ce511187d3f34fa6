"""The scorer's error hierarchy: one base class, decided on at the worker boundary."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(PipelineError):
    """Settings are missing or malformed; fix the configuration and restart."""


class InvalidEvent(PipelineError):
    """An event failed validation; it is dead-lettered and changes no state.

    Args:
        reason: a readable, one-line reason.
        raw: the payload as received, kept for the dead letter.
    """

    def __init__(self, reason: str, raw: bytes | str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class PoisonEvent(PipelineError):
    """A valid event made scoring raise; the drain is retried, then the event dead-lettered."""


class StateConflict(PipelineError):
    """Another process committed the job's state first; re-read and try again."""


class ReplicationTimeout(PipelineError):
    """Fewer replicas than ``CKPT_DATA_WAIT_REPLICAS`` acknowledged a commit in time.

    The commit stands on its master; the task fails, so its flushes are not asked for, and
    the job is drained again on the pump's next pass.
    """


class SinkError(PipelineError):
    """Base class of errors writing the job row."""


class TransientSinkError(SinkError):
    """The database did not answer or failed temporarily; retry with backoff."""


class PermanentSinkError(SinkError):
    """The row cannot be written (missing row, wrong token); recorded, not retried."""
