"""Producer side of the checkpoint pipeline: publish raw train/eval events to Redis.

Only the standard library, ``redis`` and (for the callback) ``transformers`` are needed, so
this package can be embedded verbatim in a pod script. It holds no scoring code.
"""

from .publisher import EventPublisher

__all__ = ["CheckpointEventsCallback", "EventPublisher"]


def __getattr__(name: str):
    # The callback needs transformers; importing it lazily keeps EventPublisher usable alone.
    if name == "CheckpointEventsCallback":
        from .callback import CheckpointEventsCallback

        return CheckpointEventsCallback
    raise AttributeError(name)
