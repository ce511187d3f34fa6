"""Entry point of the pod script: train from the spec, publish events, follow the scorer.

Embedded verbatim in the rendered script next to ``producer/`` and the training program
(``remote/training.py``, ``spec.py``, ``schema.py``, ``arguments.py``, ``dataset.py``).
By default (spec field ``follow_scorer``) the callback reads the scorer's decision for each
evaluation through the pod's read-only access to ``ckpt:{<job>}:decision``, so checkpoint
rotation, early stopping and the model loaded at the end follow the composite score; scoring
itself stays on the trusted side. At the end the best model is saved to ``<output_dir>/best``.
An exception in training publishes ``train_end`` with status ``failed`` and the error, and
the process exits non-zero, so the row tells the user what happened to the pod.

A restart resumes. ``output_dir`` lives on the pod's persistent volume; when the script starts
and it already holds complete checkpoints of this job, training continues from the newest
(``resume_from_checkpoint``): the callback's ``train_begin`` carries ``resumed_from_step``, so
the scorer drops what the killed attempt recorded after that step, and the run ends with the
row an uninterrupted run gives. A marker file (:data:`JOB_MARKER`) ties the folder to its job:
checkpoints of another job are never resumed, and a job that completed does not train again.
"""

import json
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

JOB_MARKER = ".ckpt-job.json"
"""File in ``output_dir`` naming the job whose checkpoints the folder holds, and whether the
job completed (then a restarted pod has nothing to train)."""

TRAINER_STATE = "trainer_state.json"
"""Hugging Face writes it last into a checkpoint folder: a folder without it is incomplete."""

CLOSE_TIMEOUT_S = 30.0


class OutputDirError(RuntimeError):
    """``output_dir`` holds the checkpoints of another job."""


def main(spec: dict, env: Mapping[str, str] = os.environ) -> int:
    """Run the training of ``spec`` with a ``CheckpointEventsCallback``, resuming if it can.

    The callback follows the scorer when the spec's ``follow_scorer`` is true (the default),
    waiting at most ``decision_timeout_s`` per evaluation. When ``output_dir`` holds complete
    checkpoints of this job, training resumes from the newest (see :func:`newest_checkpoint`)
    after the checkpoint's own history is published again (see :func:`republish_checkpoint`).

    Args:
        spec: the training spec (see ``remote.training.SPEC_FIELDS``).
        env: ``REDIS_URL`` (required), ``JOB_ID`` (defaults to the spec's), ``CKPT_SPOOL_DIR``.

    Returns:
        The process exit status: 0 when training completed (now, or by an earlier attempt),
        1 when it failed, 2 when the environment does not fit the spec.
    """
    import producer
    from producer import CheckpointEventsCallback
    from remote.spec import validate_spec
    from remote.training import BEST_DIR, run_training

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
        output_dir = Path(spec["output_dir"])
        completed = claim_output_dir(output_dir, job_id)
        callback = CheckpointEventsCallback(
            job_id,
            env["REDIS_URL"],
            spool_dir=spool_dir,
            close_timeout_s=CLOSE_TIMEOUT_S,
            follow_scorer=spec["follow_scorer"],
            decision_timeout_s=spec["decision_timeout_s"],
        )
        if completed:
            # A pod restarted after its job ended (before the trusted side stopped it):
            # training again would reopen the job. Only hand over what the last attempt
            # may have left in the spool on the volume.
            print(f"ckpt-pod: job {job_id} already completed in {output_dir}", flush=True)
            callback.publisher.close(CLOSE_TIMEOUT_S)
            return 0
        resume = newest_checkpoint(output_dir)
        if resume is not None:
            print(f"ckpt-pod: resuming from {resume.name}", flush=True)
            republish_checkpoint(callback.publisher, resume)
        trainer = run_training(spec, [callback], resume_from_checkpoint=resume)
        write_marker(output_dir, job_id, completed=True)
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
        f" {output_dir / BEST_DIR}",
        flush=True,
    )
    return 0


def newest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """Return the complete ``checkpoint-N`` folder of ``output_dir`` with the highest N.

    A folder is complete when its ``trainer_state.json`` (written last) parses and names the
    folder's own step: a pod killed while saving leaves a folder without it, or with a
    truncated one, which is skipped (and overwritten when the resumed run saves that step).

    Returns:
        The folder, or None when there is none (a fresh start).
    """
    from producer.wire import checkpoint_step

    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    complete = []
    for path in folder.iterdir():
        step = checkpoint_step(path.name)
        if step is not None and path.is_dir() and _state_step(path) == step:
            complete.append((step, path))
    return max(complete)[1] if complete else None


def _state_step(checkpoint: Path) -> int | None:
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, truncated, not UTF-8
        return None
    step = state.get("global_step") if isinstance(state, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def republish_checkpoint(publisher, checkpoint: Path) -> int:
    """Publish again the train logs and evaluations a checkpoint recorded, and its save.

    The killed attempt may have died with its last events still in the publisher's memory:
    the train logs it lets gather for a moment, and the ``checkpoint_saved`` of this very
    checkpoint (Hugging Face calls ``on_save`` after writing ``trainer_state.json``). The
    resumed run starts after the checkpoint's step, so it would never publish them. The
    checkpoint's ``log_history`` holds the same numbers the callback published, and the
    scorer keeps one record per step, so publishing them again changes nothing that did
    arrive. The save is published with the checkpoint folders present now.

    Args:
        publisher: the job's ``producer.EventPublisher``.
        checkpoint: the folder training resumes from.

    Returns:
        The number of events queued.
    """
    from producer.callback import SCORE_METRIC, retained_checkpoints
    from producer.wire import CHECKPOINT_SAVED, EVAL, TRAIN_LOG

    state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    step = state["global_step"]
    queued = 0
    for entry in state.get("log_history") or []:
        at = entry.get("step") if isinstance(entry, dict) else None
        # The end-of-run summary (train_runtime, ...) goes with train_end, not as a log.
        if not isinstance(at, int) or at > step or "train_runtime" in entry:
            continue
        metrics = {k: v for k, v in entry.items() if k not in ("step", "epoch", SCORE_METRIC)}
        kind = EVAL if any(name.startswith("eval_") for name in metrics) else TRAIN_LOG
        queued += publisher.emit(kind, at, entry.get("epoch"), metrics)
    info = {"checkpoint": checkpoint.name, "retained": retained_checkpoints(checkpoint.parent)}
    queued += publisher.emit(CHECKPOINT_SAVED, step, state.get("epoch"), info=info)
    return queued


def claim_output_dir(output_dir: Path, job_id: str) -> bool:
    """Mark ``output_dir`` as this job's, and say whether the job already completed there.

    Raises:
        OutputDirError: if the folder's marker names another job: resuming its checkpoints
            would report that job's training as this one's.
    """
    marker = _read_marker(output_dir)
    if marker is not None and marker.get("job_id") != job_id:
        raise OutputDirError(
            f"output_dir {output_dir} holds the checkpoints of job {marker.get('job_id')!r},"
            f" not {job_id!r}: give each job its own output_dir"
        )
    if marker is not None and marker.get("completed") is True:
        return True
    write_marker(output_dir, job_id, completed=False)
    return False


def write_marker(output_dir: Path, job_id: str, *, completed: bool) -> None:
    """Write the job marker of ``output_dir`` atomically (a kill leaves the old or the new)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    marker = output_dir / JOB_MARKER
    partial = marker.with_name(f"{JOB_MARKER}.partial")
    partial.write_text(json.dumps({"job_id": job_id, "completed": completed}), encoding="utf-8")
    os.replace(partial, marker)


def _read_marker(output_dir: Path) -> dict | None:
    try:
        marker = json.loads((output_dir / JOB_MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OutputDirError(f"{output_dir / JOB_MARKER} is unreadable ({exc})") from None
    return marker if isinstance(marker, dict) else {}
