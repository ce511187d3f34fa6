"""``ckpt-pipeline``: the command line of the pipeline, and its composition root.

This is the one module that wires components together (producer, scorer, sink, remote);
each command imports what it needs when it runs, so ``ckpt-pipeline pump`` does not load
torch and the components keep the import rules of DESIGN section 2.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import click
from redis.exceptions import ConnectionError as RedisConnectionError

from .errors import PipelineError
from .settings import Settings


def _settings() -> Settings:
    return Settings.from_env()


def _redis(settings: Settings, *, ride_out_outages: bool = False) -> Any:
    from .connection import connect

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
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class _Group(click.Group):
    """Turns the project's own errors into one clear line and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # click's own: --help and usage errors (Exit is a RuntimeError)
        except (PipelineError, ValueError, FileNotFoundError, RuntimeError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except RedisConnectionError as exc:  # no traceback for the commonest operator error
            click.echo(f"error: Redis is unreachable ({exc}); check REDIS_URL", err=True)
            sys.exit(2)


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
    help="Also create the pod's publish-only Redis user and print its redis_url as JSON.",
)
def register(
    job_id: str, job_token: str, create_row: bool, model_name: str, pod_credentials: bool
) -> None:
    """Register JOB_ID with its JOB_TOKEN so the pipeline scores it and writes its row."""
    from .registry import register_job

    settings = _settings()
    if create_row:
        _create_row(settings, job_id, job_token, model_name)
    redis = _redis(settings)
    register_job(redis, job_id, job_token)
    if pod_credentials:
        credentials = _create_pod_credentials(settings, redis, job_id)
        click.echo(json.dumps({**credentials.masked(), "redis_url": credentials.redis_url}))
        return
    click.echo(f"registered {job_id}")


def _create_pod_credentials(settings: Settings, redis: Any, job_id: str) -> Any:
    from remote.credentials import create_pod_user

    from .registry import record_pod_user

    credentials = create_pod_user(redis, job_id, settings.pod_redis_url or settings.redis_url)
    record_pod_user(redis, job_id, credentials.username)
    return credentials


def _create_row(settings: Settings, job_id: str, job_token: str, model_name: str) -> None:
    from sink.writers import writer_from_settings
    from sink.writers.sqlite import SqliteWriter

    writer = writer_from_settings(settings)
    try:
        if not isinstance(writer, SqliteWriter):
            raise click.UsageError(
                "--create-row works with the SQLite sink only (CKPT_SINK=sqlite:///...)"
            )
        writer.create_job(job_id, job_token, model_name=model_name or "unknown")
    finally:
        writer.close()


@main.command()
@click.argument("job_id")
def unregister(job_id: str) -> None:
    """Remove JOB_ID from the active jobs and delete its pod user (state and row stay)."""
    from .registry import unregister_job

    unregister_job(_redis(_settings()), job_id)
    click.echo(f"unregistered {job_id}")


@main.command()
@click.argument("job_id")
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False))
def replay(job_id: str, output_dir: str) -> None:
    """Publish the events of a finished run in OUTPUT_DIR as JOB_ID (back-fills old runs)."""
    from producer import EventPublisher

    from .history import run_events

    settings = _settings()
    events = run_events(job_id, output_dir, ts=time.time())
    publisher = EventPublisher(job_id, settings.redis_url)
    for event in events:
        publisher.publish(event)
    publisher.close(timeout_s=60)
    where = "sent" if not publisher.spooled else f"{publisher.spooled} spooled (Redis unreachable)"
    click.echo(f"replayed {len(events)} events for {job_id}: {where}")


@main.command()
@click.option("--burst", is_flag=True, help="One pass that enqueues whatever is behind, then exit.")
@click.option(
    "--shard", default="0/1", show_default=True, help="This pump's shard, as INDEX/COUNT."
)
def pump(burst: bool, shard: str) -> None:
    """Run the reconciler that enqueues drains and flushes for jobs that are behind."""
    from .pump import Pump
    from .worker import tune_gc

    index, _, count = shard.partition("/")
    settings = _settings()
    reconciler = Pump(
        _redis(settings, ride_out_outages=not burst), settings, int(index), int(count or 1)
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


@main.command()
@click.option("--burst", is_flag=True, help="Exit when nothing is behind.")
def work(burst: bool) -> None:
    """Run the pump and a scoring and a sink worker in one process."""
    from .runner import run_all_in_one

    settings = _settings()
    passes = run_all_in_one(_redis(settings, ride_out_outages=True), settings, burst=burst)
    if burst:
        click.echo(f"work: idle after {passes} passes")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--profile", default="default", show_default=True, help="Scoring profile.")
def checkpoints(directory: str, as_json: bool, profile: str) -> None:
    """List the checkpoints of a run folder with their scores; mark the best and the latest."""
    from .listing import list_checkpoints
    from .scoring import get_profile

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


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(job_id: str, as_json: bool) -> None:
    """Show JOB_ID's row and its pipeline state (lag, versions, dead letters, sink errors)."""
    from .status import job_status

    report = job_status(_settings(), _redis(_settings()), job_id)
    if as_json:
        click.echo(_dump(report))
        return
    click.echo(f"job {job_id}")
    for section in ("pipeline", "picks", "row"):
        click.echo(f"  {section}:")
        for name, value in (report.get(section) or {}).items():
            click.echo(f"    {name:<28} {_finite(value)}")


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
    """The RunPod path: render the pod script, launch the pod."""


def _load_spec(path: str) -> dict[str, Any]:
    from remote.training import validate_spec

    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise click.UsageError(f"{path} must hold a JSON object")
    return validate_spec(spec)


@remote.command()
@click.argument("spec_path", metavar="SPEC.json", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", help="Where to write the script (default pod_<job_id>.py).")
def render(spec_path: str, output: str | None) -> None:
    """Write the self-contained pod script for SPEC.json."""
    from remote.render import render_script

    spec = _load_spec(spec_path)
    target = Path(output or f"pod_{spec['job_id']}.py")
    target.write_text(render_script(spec), encoding="utf-8")
    click.echo(f"wrote {target}")


@remote.command()
@click.argument("spec_path", metavar="SPEC.json", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the request (secrets masked); send nothing.")
@click.option("--job-token", envvar="JOB_TOKEN", help="The job's row token (or $JOB_TOKEN).")
@click.option("--gpu-type", default=None, help="RunPod GPU type id.")
@click.option("--image", default=None, help="Container image with Python and torch.")
@click.option("--api-url", envvar="RUNPOD_API_URL", default=None, help="RunPod REST API base.")
def launch(
    spec_path: str,
    dry_run: bool,
    job_token: str | None,
    gpu_type: str | None,
    image: str | None,
    api_url: str | None,
) -> None:
    """Start a RunPod pod that trains SPEC.json and publishes its events (RUNPOD_API_KEY)."""
    import os

    from remote.launch import LaunchOptions, build_request, masked, send
    from remote.render import render_script

    spec = _load_spec(spec_path)
    overrides = {"gpu_type": gpu_type, "image": image, "api_url": api_url}
    options = LaunchOptions(**{k: v for k, v in overrides.items() if v})
    script = render_script(spec)
    api_key = os.environ.get("RUNPOD_API_KEY", "")
    settings = _settings()
    if dry_run:
        from remote.credentials import pod_username, with_credentials

        base = settings.pod_redis_url or settings.redis_url
        url = with_credentials(base, pod_username(spec["job_id"]), "***")
        request = build_request(spec["job_id"], script, url, api_key or "<unset>", options)
        click.echo(_dump(masked(request)))
        return
    if not api_key:
        raise click.UsageError("RUNPOD_API_KEY is not set")
    if not job_token:
        raise click.UsageError("--job-token (or $JOB_TOKEN) is required to register the job")
    click.echo(_dump(_launch(settings, spec, script, job_token, api_key, options, send)))


def _launch(
    settings: Settings,
    spec: dict[str, Any],
    script: str,
    job_token: str,
    api_key: str,
    options: Any,
    send: Any,
) -> dict[str, Any]:
    from remote.launch import LaunchError, build_request

    from .registry import drop_pod_user, register_job

    redis = _redis(settings)
    register_job(redis, spec["job_id"], job_token)
    credentials = _create_pod_credentials(settings, redis, spec["job_id"])
    request = build_request(spec["job_id"], script, credentials.redis_url, api_key, options)
    try:
        pod = send(request)
    except LaunchError:
        drop_pod_user(redis, spec["job_id"])  # no pod, so no credentials left lying around
        raise
    return {"job_id": spec["job_id"], "redis_user": credentials.username, "pod": pod}


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
    results = flush_spool_dir(directory, settings.redis_url, timeout_s=timeout_s)
    if not results:
        click.echo(f"no spool files in {directory}")
    for job_id, left in results.items():
        click.echo(f"{job_id}: " + ("delivered" if left == 0 else f"{left} bytes still spooled"))
    if any(results.values()):
        sys.exit(1)


def _register_dead_letter_commands() -> None:
    from .deadletters_cli import dead

    main.add_command(dead)


_register_dead_letter_commands()

if __name__ == "__main__":
    main()
