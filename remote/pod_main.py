"""Entry point of the pod script: train from the spec and only publish events.

Embedded verbatim in the rendered script next to ``producer/`` and ``remote/training.py``.
An exception in training publishes ``train_end`` with status ``failed`` and the error, and
the process exits non-zero, so the row tells the user what happened to the pod.
"""

import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path


def main(spec: dict, env: Mapping[str, str] = os.environ) -> int:
    """Run the training of ``spec`` with a ``CheckpointEventsCallback``.

    Args:
        spec: the training spec (see ``remote.training.SPEC_FIELDS``).
        env: ``REDIS_URL`` (required), ``JOB_ID`` (defaults to the spec's), ``CKPT_SPOOL_DIR``.

    Returns:
        The process exit status: 0 when training completed, 1 when it failed.
    """
    import producer
    from producer import CheckpointEventsCallback
    from remote.training import run_training

    print(f"ckpt-pod: publishing with producer from {Path(producer.__file__).parent}", flush=True)
    job_id = env.get("JOB_ID") or spec.get("job_id")
    if spec.get("job_id") and job_id != spec["job_id"]:
        print(f"JOB_ID {job_id!r} does not match the spec's job_id", file=sys.stderr)
        return 2
    if not env.get("REDIS_URL"):
        print("REDIS_URL is not set: the pod cannot publish its events", file=sys.stderr)
        return 2
    spool_dir = env.get("CKPT_SPOOL_DIR") or str(Path(spec["output_dir"]) / ".ckpt-spool")
    callback = CheckpointEventsCallback(job_id, env["REDIS_URL"], spool_dir=spool_dir)
    try:
        run_training(spec, [callback])
    except BaseException as exc:  # report every failure, including KeyboardInterrupt
        status = "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed"
        callback.report_failure(exc, status=status)
        traceback.print_exc()
        return 1
    return 0
