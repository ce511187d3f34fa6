"""Sink: maps the scorer's per-job state to the ``local_training_jobs`` row and writes it."""
