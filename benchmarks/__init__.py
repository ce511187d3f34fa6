"""Benchmarks of the checkpoint pipeline: ``python -m benchmarks [--quick] [--json FILE]``.

One module per measurement group (``callback``, ``training``, ``throughput``, ``fanout``,
``latency``, ``history``, ``writes``, ``memory``). Each group starts what it measures as real
processes (a private ``redis-server`` and the Procfile's commands: ``ckpt-pipeline pump``,
``rq worker scoring``, ``rq worker sink``, through ``benchmarks.pipeline.BenchPipeline``, the
harness of ``ckpt_pipeline.testing`` the chaos experiments use too) and returns
:class:`benchmarks.common.Figure` objects named as in issue 6. ``__main__`` runs the groups,
prints the table and writes the JSON file, and a Markdown report where asked (``--report``).
Not packaged: run it from the repository root.
"""
