"""Scorer worker: validates events, folds them into per-job state and decides the best checkpoint.

It also holds the pump (the reconciler that enqueues work), the RQ tasks of queue ``scoring``
and the ``ckpt-pipeline`` command line.
"""
