"""RELIABILITY.md's closing sections: how the faults are made, and what is not covered."""

from __future__ import annotations

NOT_COVERED = """\
- **Redis losing acknowledged writes.** With `appendfsync everysec` (Redis's default, and
  what the tests run except right before the SIGKILL of experiment 3) a crash of Redis or
  of its machine loses up to about a second of acknowledged writes: producer events are then
  lost for good, and a lost state commit rolls the job's version back, so the sink's version
  guard skips (STALE) the next writes until the version passes what the row holds; a finished
  job's row can keep values from the lost commits. Only `appendfsync always` (slower) or a
  replica that acknowledges writes (`WAIT`) closes this; experiment 3 crashes Redis only with
  `appendfsync always`.
- **Replication lag across machines**: the cluster's replicas run on the same machine, a
  loopback hop behind their masters, so experiment 10 rarely loses an acknowledged event;
  a slow or distant replica would lose more. A network partition that leaves a minority
  master accepting writes is not simulated.
- **Outages longer than `CKPT_REDIS_RETRY_S` (60 s)**: a worker busy with a task then sees
  the Redis error and `rq worker` exits; a process supervisor must restart it (an idle
  worker and the pump retry forever).
- **Network faults, what experiments 13 to 15 leave out**:
  - the delay and the loss act on the packets leaving the process's namespace only (as
    netem on one side does); this kernel has no netem, so they come from an `NFQUEUE`
    program (`testing/packet_delay.py`): a constant delay, no jitter, no reordering, no
    duplication, no corruption, no bandwidth limit;
  - links between servers (a cluster's nodes, a replica, the sentinels) are never cut: a
    partition that splits a cluster or leaves a minority master accepting writes is not
    simulated, nor a blackhole under Sentinel or a cluster;
  - the pump and workers under a slow or lossy link (only the training process gets one),
    and a blackhole longer than `CKPT_REDIS_RETRY_S` (see below);
  - a sink on Supabase (HTTP) behind a bad link; IPv6; DNS failures;
  - the fix for experiment 14's dead consumers (`scorer_worker/orphans.py`) covers plain
    `redis://` URLs; behind Sentinel (`redis+sentinel://`) and over TLS a dead `BLMOVE` is
    still closed only by the server's `tcp-keepalive` (300 s by default), so a task may
    wait one `CKPT_QUEUED_MARKER_TTL_S` (30 s) after such a fault: `tcp-keepalive 10` on the
    Redis server shortens that for every client.
- **PostgREST/Supabase under faults**: the Supabase writer is tested against recorded
  requests only; the 60 s outage is of a PostgreSQL server, stopped cleanly. A PostgreSQL
  crash and a failover are not part of these experiments (the writer's own tests kill a
  server once).
- **Events in a killed producer's memory**: a training process killed before its publisher
  thread sent or spooled its last events (the 50 ms gathering window, or a send in
  progress) loses them; only what reached the spool file is delivered later. A pod whose
  disk goes with it loses its spool too.
- **A full disk, what experiment 16 leaves out**: the spool's folder fills while Redis is
  down; a disk that fills while Redis is up costs nothing (the spool is not used). Events a
  training process dropped and could not report before it died (its last report is in
  memory until Redis or the disk takes it) are lost uncounted. A full disk under Redis
  itself (AOF or RDB writes failing) is not simulated.
- **Clock skew between two attempts of one job** on different machines: resume handling
  compares producer timestamps (docs/decisions.md); not tested.
- **Several pumps (`--shard`)** under faults, worker OOM kills that leave the machine short
  of memory and task timeouts (`CKPT_TASK_TIMEOUT_S`) being hit are not covered.
- **Metric rows of steps a resume dropped**: when an attempt's steps past its resume point
  were already written to `local_training_metrics` and the new attempt never reaches those
  steps again, their rows stay (the sink writes changed steps; it deletes none). The row of
  `local_training_jobs` is right. Found by the flood experiment with short runs; the
  experiments use runs whose second attempt re-covers the dropped steps.
- **Timing figures** come from one two-core machine shared with other work; they show
  orders of magnitude, not service levels.
"""

METHOD = """\
- Every experiment runs the Procfile's commands as separate processes (`ckpt-pipeline
  pump`, `rq worker scoring|sink --worker-class
  ckpt_pipeline.worker.PipelineWorker --connection-class
  scorer_worker.connection.RetryingRedis`) against a private `redis-server` (AOF on, fixed
  port so it can restart) and a private PostgreSQL (migrations applied), from
  `tests/chaos/conftest.py`.
- A kill is SIGKILL of the process group and of any RQ work-horse (which RQ puts in a session
  of its own): a crash of the process and of the task it runs. The Procfile's
  `PipelineWorker` runs tasks in the worker process itself, so a kill in a task kills the
  worker. Kills are aimed with probes
  that `tests/chaos/inject/sitecustomize.py` adds to the workers (marks, and a short linger
  after a state commit or before a task starts; they change no decision of the pipeline).
- "Identical to a fault-free run" means: the same event lists are published to a fresh
  Redis and database and drained by the same tasks with no fault; every job row column the
  sink writes but `scoring_version` and every metric row must be equal.
- Convergence: every job's stream drained and its row at the state's version
  (`written_version == version`), measured from the last fault.
- Network faults (experiments 13 to 15): the processes under test run in a network
  namespace; a router namespace between it and the root namespace, where the servers
  listen, delays, drops or blackholes the packets it forwards (iptables `NFQUEUE` and
  `DROP`; `tc netem` where the kernel has it). `tests/test_netfault.py` checks the link
  itself: a 200 ms delay adds 200 ms to each round trip, a 5 % loss drops 4 to 6 % of
  datagrams, a blackholed connect times out instead of being refused, and an established
  connection survives a heal.
"""
