"""``ckpt-pipeline remote``: render, launch, inspect and stop a job's RunPod pod."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from scorer_worker.settings import Settings

from .cli_base import _data, _dump, _pod_lifecycle, _redis, _settings, create_pod_credentials


@click.group()
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
    from remote.spec import validate_spec

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

        base = settings.pod_url
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
    data = _data(settings, redis)  # the pod publishes there, so its user lives there
    register_job(redis, job_id, job_token, data=data)
    credentials = create_pod_credentials(settings, data, job_id)

    def body_for(gpu_type: str) -> dict[str, Any]:
        return create_pod_body(job_id, script, credentials.redis_url, options, gpu_type)

    with RunPodClient(options.api_url, api_key, secrets=[credentials.password]) as client:
        try:
            pod, gpu_type = launch_pod(client, body_for, options.gpu_types)
        except BaseException as exc:
            if not getattr(exc, "pod_may_exist", False):
                drop_pod_user(data, job_id)  # no pod, so no credentials left lying around
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
