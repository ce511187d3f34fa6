"""Fault-injection experiments (``pytest -m chaos``): DESIGN section 6 under crashes and outages.

Each experiment runs the real processes (``ckpt-pipeline pump``, ``rq worker scoring``,
``rq worker sink``) against a private ``redis-server`` and a private PostgreSQL, injects
faults, and appends its figures to ``chaos-results.json``; ``python -m tests.chaos.report``
renders them as ``RELIABILITY.md``.
"""
