"""Benchmarks of the checkpoint pipeline: ``python -m benchmarks [--quick] [--json FILE]``.

One module per measurement group (``callback``, ``training``, ``throughput``, ``fanout``,
``latency``, ``history``, ``writes``, ``memory``). Each group starts what it measures as real
processes (a private ``redis-server``, ``rq worker scoring``, ``rq worker sink``,
``ckpt-pipeline pump``) and returns :class:`benchmarks.common.Figure` objects named as in
issue 6. ``__main__`` runs the groups, prints the table and writes ``BENCHMARKS.md`` and the
JSON file. Not packaged: run it from the repository root.
"""
