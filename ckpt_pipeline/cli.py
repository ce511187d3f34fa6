"""``ckpt-pipeline``: the command line of the pipeline, and its composition root.

This is the one module that wires components together (producer, scorer, sink, remote);
each command imports what it needs when it runs, so ``ckpt-pipeline pump`` does not load
torch and the components keep the import rules of DESIGN section 2.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import click
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from producer.redaction import terminal_safe
from producer.wire import spell_non_finite
from scorer_worker.errors import PipelineError
from scorer_worker.settings import Settings

# How long replay waits for the publisher: for room in its queue, then for the last batches.
REPLAY_WAIT_S = 60.0


def _settings() -> Settings:
    return Settings.from_env()


def _redis(settings: Settings, *, ride_out_outages: bool = False) -> Any:
    from scorer_worker.connection import connect

    return connect(settings, ride_out_outages=ride_out_outages)


def _json_default(value: Any) -> Any:
    return str(value)


def _dump(data: Any) -> str:
    return json.dumps(_finite(data), indent=2, default=_json_default)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return spell_non_finite(value) if isinstance(value, float) else value


class _Group(click.Group):
    """Turns the project's own errors into one clear line and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # click's own: --help and usage errors (Exit is a RuntimeError)
        except (PipelineError, ValueError, OSError, RuntimeError) as exc:
            _fail(str(exc))
        except RedisConnectionError as exc:  # no traceback for the commonest operator error
            _fail(f"Redis is unreachable ({exc}); check REDIS_URL")
        except RedisTimeoutError as exc:
            _fail(f"Redis did not answer in time ({exc}); check REDIS_URL")
        except OutOfMemoryError:
            _fail(
                "Redis is out of memory (used memory > maxmemory) and refused the write;"
                " free memory or raise maxmemory, then try again"
            )
        except RedisError as exc:
            _fail(f"Redis refused the command: {_redis_reason(exc)}")


def _fail(message: str) -> None:
    """Print ``error: MESSAGE`` as one inert line (the message may quote a path or an id
    holding newlines or escape sequences) and exit with status 2."""
    line = terminal_safe(message, keep_newlines=False)
    click.echo("error: " + line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"), err=True)
    sys.exit(2)


# redis-py names the failed command of a pipeline in its message, arguments (tokens) included.
_PIPELINE_COMMAND = re.compile(r"Command # \d+ \(.*?\) of pipeline caused error: ", re.DOTALL)


def _redis_reason(exc: RedisError) -> str:
    text = _PIPELINE_COMMAND.sub("", str(exc))
    return f"{type(exc).__name__}: {' '.join(text.split())}"


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """Checkpoint pipeline: pick the best checkpoint of every fine-tuning run."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.argument("job_id")
@click.argument("job_token")
@click.option("--create-row", is_flag=True, help="Insert the pending row in the SQLite sink.")
@click.option("--model-name", default="", help="model_name of the created row.")
@click.option(
    "--pod-credentials",
    is_flag=True,
    help="Also create the pod's Redis user (XADD its stream, HMGET its decision) and print "
    "its redis_url as JSON.",
)
def register(
    job_id: str, job_token: str, create_row: bool, model_name: str, pod_credentials: bool
) -> None:
    """Register JOB_ID with its JOB_TOKEN so the pipeline scores it and writes its row."""
    from scorer_worker.registry import register_job

    # Everything is checked before anything is written: a refused id or token leaves no row,
    # no registration and no key behind.
    _check_job_id(job_id)
    if not job_token:
        raise ValueError("the job token must not be empty")
    settings = _settings()
    redis = _redis(settings)
    redis.ping()  # an unreachable Redis is reported here, before the row is inserted
    created = create_row and _create_row(settings, job_id, job_token, model_name)
    try:
        register_job(redis, job_id, job_token)
    except RedisError:
        if created:  # Redis refused the registration (out of memory...): undo the new row
            _drop_created_row(settings, job_id, job_token)
        raise
    if pod_credentials:
        credentials = _create_pod_credentials(settings, redis, job_id)
        click.echo(json.dumps({**credentials.masked(), "redis_url": credentials.redis_url}))
        return
    click.echo(f"registered {job_id}")


def _create_pod_credentials(settings: Settings, redis: Any, job_id: str) -> Any:
    from remote.credentials import create_pod_user
    from scorer_worker.registry import record_pod_user

    credentials = create_pod_user(redis, job_id, settings.pod_redis_url or settings.redis_url)
    record_pod_user(redis, job_id, credentials.username, credentials.password)
    return credentials


def _check_job_id(job_id: str) -> None:
    from producer.wire import is_valid_job_id

    if not is_valid_job_id(job_id):
        # repr: a control character or an escape sequence is shown, not played to the terminal
        raise ValueError(f"invalid job id {job_id!r}: expected 1-64 of [A-Za-z0-9_-]")


def _create_row(settings: Settings, job_id: str, job_token: str, model_name: str) -> bool:
    """Insert the pending row; return True when this call inserted it."""
    from sink.writers import writer_from_settings
    from sink.writers.sqlite import SqliteWriter

    writer = writer_from_settings(settings)
    try:
        if not isinstance(writer, SqliteWriter):
            raise click.UsageError(
                "--create-row works with the SQLite sink only (CKPT_SINK=sqlite:///...)"
            )
        return writer.create_job(job_id, job_token, model_name=model_name or "unknown")
    finally:
        writer.close()


def _drop_created_row(settings: Settings, job_id: str, job_token: str) -> None:
    from sink.writers import writer_from_settings

    writer = writer_from_settings(settings)
    try:
        writer.delete_pending_job(job_id, job_token)
    finally:
        writer.close()


@main.command()
@click.argument("job_id")
def unregister(job_id: str) -> None:
    """Remove JOB_ID from the active jobs and delete its pod user (state and row stay)."""
    from scorer_worker.registry import unregister_job

    _check_job_id(job_id)
    unregister_job(_redis(_settings()), job_id)
    click.echo(f"unregistered {job_id}")


@main.command()
@click.argument("job_id")
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False))
def replay(job_id: str, output_dir: str) -> None:
    """Publish the events of a finished run in OUTPUT_DIR as JOB_ID (back-fills old runs)."""
    from producer import EventPublisher
    from scorer_worker.connection import probe
    from scorer_worker.history import run_events

    _check_job_id(job_id)
    settings = _settings()
    events = run_events(job_id, output_dir, ts=time.time())  # the whole folder is read first
    probe(settings)  # Redis down: say so now, rather than spool the whole run
    publisher = EventPublisher(job_id, settings.redis_url)
    for event in events:
        # Waits while the queue is full: a long run has more events than the queue holds, and
        # publish() (made for the training loop, which must never wait) would drop them.
        publisher.publish_waiting(event, timeout_s=REPLAY_WAIT_S)
    publisher.close(timeout_s=REPLAY_WAIT_S)
    if publisher.dropped:
        raise PipelineError(
            f"replay of {job_id}: {publisher.dropped} of {len(events)} events were not delivered"
            " (the publisher did not keep up); replaying again is safe"
        )
    if publisher.spooled:
        click.echo(
            f"replay of {job_id}: {publisher.spooled} of {len(events)} events not delivered"
            f" (Redis became unreachable), kept in {publisher.spool.directory}; deliver them"
            f" with `ckpt-pipeline spool flush {publisher.spool.directory}`",
            err=True,
        )
        sys.exit(1)
    click.echo(f"replayed {len(events)} events for {job_id}: sent")


@main.command()
@click.option("--burst", is_flag=True, help="One pass that enqueues whatever is behind, then exit.")
@click.option(
    "--shard", default="0/1", show_default=True, help="This pump's shard, as INDEX/COUNT."
)
def pump(burst: bool, shard: str) -> None:
    """Run the reconciler that enqueues drains and flushes for jobs that are behind."""
    from scorer_worker.pump import Pump
    from sink.tasks import FLUSH

    from .worker import tune_gc

    index, _, count = shard.partition("/")
    settings = _settings()
    redis = _redis(settings, ride_out_outages=not burst)
    lifecycle = _pod_lifecycle(redis, background=not burst)
    reconciler = Pump(
        redis, settings, int(index), int(count or 1), after_pass=lifecycle, flush=FLUSH
    )
    if burst:
        result = reconciler.run_once()
        click.echo(
            f"pump: {result.jobs} jobs, {result.drains_enqueued} drains and "
            f"{result.flushes_enqueued} flushes enqueued"
        )
        return
    tune_gc()
    reconciler.run()


def _pod_lifecycle(redis: Any, *, background: bool) -> Any:
    # The pump applies each RunPod job's on_end once its end is written, and ends a job whose
    # pod died (remote.lifecycle); the scorer itself does not import remote.
    from remote.lifecycle import LifecycleConfig, PodLifecycle

    return PodLifecycle(redis, LifecycleConfig.from_env(), background=background)


@main.command()
@click.option("--burst", is_flag=True, help="Exit when nothing is behind.")
def work(burst: bool) -> None:
    """Run the pump and a scoring and a sink worker in one process."""
    from scorer_worker.connection import PROBE_TIMEOUT_S, probe

    from .runner import run_all_in_one

    settings = _settings()
    try:
        probe(settings)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        if burst:  # one pass was asked for: riding out an outage silently would look hung
            raise RedisConnectionError(f"no answer within {PROBE_TIMEOUT_S:g} s: {exc}") from None
        click.echo(
            f"warning: Redis is unreachable ({exc}); waiting for it for up to "
            f"{settings.redis_retry_s:g} s (CKPT_REDIS_RETRY_S)",
            err=True,
        )
    redis = _redis(settings, ride_out_outages=True)
    lifecycle = _pod_lifecycle(redis, background=not burst)  # on_end, as the pump applies it
    passes = run_all_in_one(redis, settings, burst=burst, after_pass=lifecycle)
    if burst:
        click.echo(f"work: idle after {passes} passes")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--profile", default="default", show_default=True, help="Scoring profile.")
def checkpoints(directory: str, as_json: bool, profile: str) -> None:
    """List the checkpoints of a run folder with their scores; mark the best and the latest."""
    from scorer_worker.scoring import get_profile

    from .listing import list_checkpoints

    listing = list_checkpoints(directory, get_profile(profile))
    if as_json:
        click.echo(_dump(listing))
        return
    if not listing:
        click.echo(f"no checkpoint-* folders in {directory}")
        return
    click.echo(
        f"{'checkpoint':<18}{'epoch':>7}{'eval_loss':>11}{'train_loss':>12}{'score':>10}  flags"
    )
    for item in listing:
        flags = " ".join(
            f for f, on in (("best", item["is_best"]), ("latest", item["is_latest"])) if on
        )
        click.echo(
            f"{item['name']:<18}{_fmt(item['epoch'], 2):>7}{_fmt(item['eval_loss']):>11}"
            f"{_fmt(item['train_loss']):>12}{_fmt(item['score']):>10}  {flags}"
        )


def _unknown(report: dict[str, Any]) -> bool:
    # A typo in the id must not read as "a job with nothing to report".
    pipeline = report.get("pipeline") or {}
    traces = ("registered", "active", "lag_events", "state_version", "dead_letters", "decision")
    return report.get("row") is None and not any(pipeline.get(name) for name in traces)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(job_id: str, as_json: bool) -> None:
    """Show JOB_ID's row and its pipeline state (lag, versions, dead letters, sink errors)."""
    from .status import job_status

    _check_job_id(job_id)
    report = job_status(_settings(), _redis(_settings()), job_id)
    if _unknown(report):
        raise ValueError(
            f"unknown job {job_id!r}: not registered, and no events, state, dead letters or row"
        )
    if as_json:
        click.echo(_dump(report))
        return
    click.echo(f"job {job_id}")
    for section in ("pipeline", "picks", "row"):
        click.echo(f"  {section}:")
        for name, value in (report.get(section) or {}).items():
            # Producer text (errors, folders) must not drive the operator's terminal.
            shown = terminal_safe(str(_finite(value)), keep_newlines=False)
            click.echo(f"    {name:<28} {shown}")


@main.command()
@click.option("--workdir", type=click.Path(file_okay=False), default="ckpt-demo", show_default=True)
def demo(workdir: str) -> None:
    """Fine-tune a tiny model until it overfits and watch the pipeline pick the best checkpoint."""
    from .demo import run_demo

    run_demo(Path(workdir))


@main.command()
@click.argument("database_url")
def migrate(database_url: str) -> None:
    """Apply the additive, idempotent SQL migrations to DATABASE_URL (PostgreSQL/Supabase)."""
    from sink.migrate import run_migrations

    applied = run_migrations(database_url)
    click.echo(f"applied: {', '.join(applied)}" if applied else "up to date: nothing to apply")


@main.group()
def remote() -> None:
    """The RunPod path: render the pod script, launch the pod, follow it, stop it."""


def _read_spec(path: str) -> dict[str, Any]:
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise click.UsageError(f"{path} must hold a JSON object")
    return spec


def _load_spec(path: str) -> dict[str, Any]:
    # The training fields go to the pod; on_end is for the trusted side (remote.pod_record).
    return _split_spec(path)[0]


def _split_spec(path: str) -> tuple[dict[str, Any], str]:
    from remote.pod_record import split_launch_fields
    from remote.training import validate_spec

    training, on_end = split_launch_fields(_read_spec(path))
    return validate_spec(training), on_end


@remote.command()
@click.argument("spec_path", metavar="SPEC.json", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    help="Where to write the script: a file, or - for standard output (default pod_<job_id>.py).",
)
def render(spec_path: str, output: str | None) -> None:
    """Write the self-contained pod script for SPEC.json."""
    from remote.render import render_script

    spec = _load_spec(spec_path)
    script = render_script(spec)
    if output == "-":
        click.echo(script, nl=False)
        return
    target = Path(output or f"pod_{spec['job_id']}.py")
    if target.is_dir():
        raise click.BadParameter(
            f"{target} is a folder: name a file, or - for stdout", param_hint="-o"
        )
    target.write_text(script, encoding="utf-8")
    click.echo(f"wrote {target}")


@remote.command()
@click.argument("spec_path", metavar="SPEC.json", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the request (secrets masked); send nothing.")
@click.option("--job-token", envvar="JOB_TOKEN", help="The job's row token (or $JOB_TOKEN).")
@click.option(
    "--gpu-type",
    "gpu_types",
    multiple=True,
    help="RunPod GPU type id; repeat it for fallbacks, most preferred first.",
)
@click.option("--gpu-count", type=click.IntRange(min=1), help="GPUs for the pod (default 1).")
@click.option("--image", help="Container image with Python 3, pip and torch.")
@click.option("--cloud", type=click.Choice(("SECURE", "COMMUNITY")), help="Default SECURE.")
@click.option("--disk-gb", type=click.IntRange(min=1), help="Container disk (default 20).")
@click.option("--volume-gb", type=click.IntRange(min=10), help="Persistent volume (default 50).")
@click.option("--volume-path", help="Where the volume is mounted (default /workspace).")
@click.option("--network-volume-id", help="Mount this network volume instead.")
@click.option("--data-center", "data_centers", multiple=True, help="Preferred data center id.")
@click.option(
    "--api-url", envvar="RUNPOD_API_URL", help="RunPod API base (default https://api.runpod.io/v2)."
)
def launch(spec_path: str, dry_run: bool, job_token: str | None, **placement: Any) -> None:
    """Start a RunPod pod that trains SPEC.json and publishes its events (RUNPOD_API_KEY).

    Prints the pod id and RunPod's status; the pump stops the pod when the job ends (the
    spec's on_end: stop, terminate or keep).
    """
    import os

    from remote.launch import LaunchOptions, build_request, check_output_dir, masked
    from remote.render import render_script
    from remote.runpod import API_KEY_ENV

    spec, on_end = _split_spec(spec_path)
    options = LaunchOptions(**{k: v for k, v in placement.items() if v not in (None, ())})
    check_output_dir(spec["output_dir"], options.volume_path)
    script = render_script(spec)
    api_key = os.environ.get(API_KEY_ENV, "")
    settings = _settings()
    if dry_run:
        from remote.credentials import pod_username, with_credentials

        base = settings.pod_redis_url or settings.redis_url
        url = with_credentials(base, pod_username(spec["job_id"]), "***")
        request = build_request(spec["job_id"], script, url, api_key or "<unset>", options)
        fallbacks = list(options.gpu_types[1:])
        click.echo(_dump({**masked(request, [api_key]), "fallback_gpu_types": fallbacks}))
        return
    if not api_key:
        raise click.UsageError(f"{API_KEY_ENV} is not set")
    if not job_token:
        raise click.UsageError("--job-token (or $JOB_TOKEN) is required to register the job")
    click.echo(_dump(_launch(settings, spec, script, job_token, api_key, options, on_end)))


def _launch(
    settings: Settings,
    spec: dict[str, Any],
    script: str,
    job_token: str,
    api_key: str,
    options: Any,
    on_end: str,
) -> dict[str, Any]:
    from remote.launch import create_pod_body, launch_pod
    from remote.lifecycle import LifecycleConfig
    from remote.pod_record import record_launch
    from remote.runpod import RunPodClient
    from scorer_worker.registry import drop_pod_user, register_job

    job_id = spec["job_id"]
    redis = _redis(settings)
    register_job(redis, job_id, job_token)
    credentials = _create_pod_credentials(settings, redis, job_id)

    def body_for(gpu_type: str) -> dict[str, Any]:
        return create_pod_body(job_id, script, credentials.redis_url, options, gpu_type)

    with RunPodClient(options.api_url, api_key, secrets=[credentials.password]) as client:
        try:
            pod, gpu_type = launch_pod(client, body_for, options.gpu_types)
        except BaseException as exc:
            if not getattr(exc, "pod_may_exist", False):
                drop_pod_user(redis, job_id)  # no pod, so no credentials left lying around
            raise
    now = time.time()
    try:
        record_launch(
            redis, job_id, pod, on_end=on_end, api_url=options.api_url, gpu_type=gpu_type,
            now=now, next_poll_at=now + LifecycleConfig.from_env().poll_s,
        )  # fmt: skip
    except Exception as exc:  # the pod bills: say which one, since nothing will stop it
        raise RuntimeError(
            f"pod {pod['id']} was created but not recorded with job {job_id} ({exc}); stop it"
            " in RunPod's console, or launch again once Redis answers"
        ) from None
    # Only these two: RunPod's answer echoes the environment, Redis password included.
    return {"pod_id": pod["id"], "status": pod.get("status")}


@remote.command("status")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def remote_status(job_id: str, as_json: bool) -> None:
    """Show JOB_ID's pod: RunPod's status, the job's row status and the on_end action."""
    from remote.operator import status_report

    settings = _settings()
    report = status_report(_pod_lifecycle(_redis(settings), background=False), job_id)
    report["row_status"] = _row_status(settings, job_id)
    if as_json:
        click.echo(_dump(report))
        return
    if report["pod_id"] is None:
        click.echo(f"job {job_id}: no RunPod pod recorded (row: {report['row_status']})")
        return
    runpod, job, on_end = report["runpod"], report["job"], report["on_end"]
    lines = [
        f"job {job_id}: pod {report['pod_id']} on {report['gpu_type']} ({report['api_url']})",
        f"  runpod status   {runpod.get('status') or 'unknown'}"
        + (f" ({runpod['error']})" if runpod.get("error") else ""),
        f"  job status      {job['status']} (version {job['version']},"
        f" written {job['written_version']})",
        f"  row status      {report['row_status']}",
        f"  on_end          {on_end['action']}: {on_end['state']}"
        + (f", {on_end['result']} at {on_end['done_at']}" if on_end["result"] else ""),
    ]
    if on_end["attempts"] and on_end["state"] != "done":
        lines.append(
            f"                  {on_end['attempts']} failed attempt(s), next at"
            f" {on_end['next_attempt_at']}: {on_end['last_error']}"
        )
    if report["ended_by_trusted_side"]:
        lines.append(f"  ended because   {report['ended_by_trusted_side']}")
    click.echo("\n".join(lines))


def _row_status(settings: Settings, job_id: str) -> str | None:
    from sink.writers import writer_from_settings

    writer = writer_from_settings(settings)
    try:
        row = writer.read_job(job_id)
    finally:
        writer.close()
    return None if row is None else row.get("status")


@remote.command("stop")
@click.argument("job_id")
@click.option("--terminate", is_flag=True, help="Delete the pod and its volume instead.")
def remote_stop(job_id: str, terminate: bool) -> None:
    """Stop JOB_ID's pod now (GPU billing ends, the volume stays), or terminate it."""
    from remote.lifecycle import LifecycleConfig, PodLifecycle
    from remote.operator import stop_by_hand
    from remote.runpod import RetryPolicy

    redis = _redis(_settings())
    # By hand: retried in place (429, 5xx) rather than left to the pump's backoff.
    lifecycle = PodLifecycle(redis, LifecycleConfig.from_env(), retry=RetryPolicy())
    result = stop_by_hand(lifecycle, job_id, "terminate" if terminate else "stop")
    click.echo(f"{job_id}: pod {result}")


@main.group()
def spool() -> None:
    """Producer spool files: events a training process could not deliver."""


@spool.command("flush")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--timeout-s", default=60.0, show_default=True, help="Time allowed per job.")
def spool_flush(directory: str, timeout_s: float) -> None:
    """Deliver every job's spooled events in DIRECTORY to Redis, in order."""
    from producer.publisher import flush_spool_dir

    settings = _settings()
    _check_spool_dir(directory)
    results = flush_spool_dir(directory, settings.redis_url, timeout_s=timeout_s)
    if not results:
        click.echo(f"no spool files in {directory}")
    for job_id, left in results.items():
        click.echo(f"{job_id}: " + ("delivered" if left == 0 else f"{left} bytes still spooled"))
    if any(results.values()):
        sys.exit(1)


def _check_spool_dir(directory: str) -> None:
    """Refuse a folder holding a damaged spool before anything is sent; warn of a damaged
    offset file (the spool is then delivered again from its start, which is safe)."""
    from producer.spool import Spool, spool_files
    from producer.wire import is_valid_job_id

    damaged = []
    for job_id, path in spool_files(directory):
        if not is_valid_job_id(job_id):
            damaged.append(f"{path}: not a spool file name (not a job id)")
            continue
        spool = Spool(directory, job_id)
        damaged.extend(spool.damage(max_problems=1))
        if problem := spool.offset_problem():
            shown = terminal_safe(problem, keep_newlines=False)
            click.echo(f"warning: {shown}; delivering the whole spool again", err=True)
    if len(damaged) == 1:
        raise PipelineError(f"{damaged[0]}: nothing delivered")
    if damaged:
        for problem in damaged:
            click.echo(f"error: {terminal_safe(problem, keep_newlines=False)}", err=True)
        raise PipelineError(f"nothing delivered: {len(damaged)} damaged spool files above")


def _register_dead_letter_commands() -> None:
    from .deadletters_cli import dead

    main.add_command(dead)


_register_dead_letter_commands()

if __name__ == "__main__":
    main()
