"""Entry point of the pod script: train from the spec, publish events, follow the scorer.

Embedded verbatim in the rendered script next to ``producer/`` and ``remote/training.py``.
By default (spec field ``follow_scorer``) the callback reads the scorer's decision for each
evaluation through the pod's read-only access to ``ckpt:{<job>}:decision``, so checkpoint
rotation, early stopping and the model loaded at the end follow the composite score; scoring
itself stays on the trusted side. At the end the best model is saved to ``<output_dir>/best``.
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

    The callback follows the scorer when the spec's ``follow_scorer`` is true (the default),
    waiting at most ``decision_timeout_s`` per evaluation.

    Args:
        spec: the training spec (see ``remote.training.SPEC_FIELDS``).
        env: ``REDIS_URL`` (required), ``JOB_ID`` (defaults to the spec's), ``CKPT_SPOOL_DIR``.

    Returns:
        The process exit status: 0 when training completed, 1 when it failed.
    """
    import producer
    from producer import CheckpointEventsCallback
    from remote.training import BEST_DIR, run_training, validate_spec

    print(f"ckpt-pod: publishing with producer from {Path(producer.__file__).parent}", flush=True)
    job_id = env.get("JOB_ID") or spec.get("job_id")
    if spec.get("job_id") and job_id != spec["job_id"]:
        print(f"JOB_ID {job_id!r} does not match the spec's job_id", file=sys.stderr)
        return 2
    if not env.get("REDIS_URL"):
        print("REDIS_URL is not set: the pod cannot publish its events", file=sys.stderr)
        return 2
    spool_dir = env.get("CKPT_SPOOL_DIR") or str(Path(spec["output_dir"]) / ".ckpt-spool")
    callback = None
    try:
        # Validated before the callback is made: the loop's settings come from the spec.
        spec = validate_spec(spec)
        callback = CheckpointEventsCallback(
            job_id,
            env["REDIS_URL"],
            spool_dir=spool_dir,
            follow_scorer=spec["follow_scorer"],
            decision_timeout_s=spec["decision_timeout_s"],
        )
        trainer = run_training(spec, [callback])
    except BaseException as exc:  # report every failure, including KeyboardInterrupt
        if callback is None:  # a bad spec: report it with a callback that only publishes
            callback = CheckpointEventsCallback(job_id, env["REDIS_URL"], spool_dir=spool_dir)
        status = "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed"
        callback.report_failure(exc, status=status)
        traceback.print_exc()
        return 1
    best = trainer.state.best_model_checkpoint
    print(
        f"ckpt-pod: best model ({Path(best).name if best else 'the final model'}) saved to"
        f" {Path(spec['output_dir']) / BEST_DIR}",
        flush=True,
    )
    return 0
