"""The RunPod v2 request that starts a training pod, and trying it on each GPU type (trusted side).

The body is a ``CreatePodRequest`` of RunPod's REST API v2 (``POST {api}/pods``): nested
``name``, ``image``, ``gpu: {id, count}``, ``cloud``, ``disk``, ``env``, ``args`` and
``mounts`` with a volume that holds the spec's ``output_dir``, so checkpoints survive a
container restart. The document's create table decides what an error means: 400 and 403
refuse this GPU type (try the next one), 402 stops (no GPU type will be paid for), 422 is a
bug in this body (its ``errors`` are shown), 429 and 5xx are retried in place by the client.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from producer.redaction import MASK
from producer.redaction import redact as mask

from .bootstrap import SCRIPT_ENV, encode_script, start_args
from .runpod import DEFAULT_API_URL, RunPodClient, RunPodError

PLACEMENT_REFUSED = (400, 403)
"""Answers that refuse one GPU type (capacity, access): the next type may place."""


class LaunchError(RuntimeError):
    """RunPod did not create the pod (the message has no secrets).

    Attributes:
        pod_may_exist: True when an answer was lost and the pod may have been created
            anyway: its credentials must then stay, or that pod could not publish.
    """

    def __init__(self, message: str, *, pod_may_exist: bool = False) -> None:
        super().__init__(message)
        self.pod_may_exist = pod_may_exist


@dataclass(frozen=True)
class LaunchOptions:
    """Where and on what the pod runs.

    Attributes:
        gpu_types: RunPod GPU type ids, in order of preference: each is tried until one places.
        image: a container image with Python 3, pip and torch.
        gpu_count: GPUs for the pod.
        cloud: ``SECURE`` or ``COMMUNITY``.
        disk_gb: the container disk (ephemeral: wiped on restart; holds the pip packages).
        volume_gb: the persistent volume (survives restarts; holds ``output_dir``), >= 10.
        volume_path: where the volume is mounted; a relative ``output_dir`` lives under it.
        network_volume_id: mount this network volume at ``volume_path`` instead of a
            host-local persistent one (survives a host failure too; pin ``data_centers``).
        data_centers: preferred data center ids (empty: the scheduler chooses).
        api_url: RunPod's REST API base, including ``/v2``.
    """

    gpu_types: tuple[str, ...] = ("NVIDIA GeForce RTX 4090",)
    image: str = "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404"
    gpu_count: int = 1
    cloud: str = "SECURE"
    disk_gb: int = 20
    volume_gb: int = 50
    volume_path: str = "/workspace"
    network_volume_id: str | None = None
    data_centers: tuple[str, ...] = field(default=())
    api_url: str = DEFAULT_API_URL


def pod_name(job_id: str) -> str:
    """Return the RunPod pod name of ``job_id``."""
    return f"ckpt-{job_id}"


def check_output_dir(output_dir: str, volume_path: str) -> None:
    """Refuse an ``output_dir`` that is not on the pod's volume.

    Raises:
        LaunchError: when an absolute ``output_dir`` lies outside ``volume_path``: its
            checkpoints would be on the container disk, which a restart wipes.
    """
    path = PurePosixPath(output_dir)
    if path.is_absolute() and not path.is_relative_to(volume_path):
        raise LaunchError(
            f"output_dir {output_dir} is not on the pod's volume ({volume_path}): a container"
            " restart would lose its checkpoints; use a path under the volume or a relative one"
        )


def create_pod_body(
    job_id: str, script: str, pod_redis_url: str, options: LaunchOptions, gpu_type: str
) -> dict[str, Any]:
    """Return the ``CreatePodRequest`` body that starts ``script`` on one ``gpu_type``."""
    if options.network_volume_id:
        mounts = {"network": [{"volumeId": options.network_volume_id, "path": options.volume_path}]}
    else:
        mounts = {"persistent": {"size": options.volume_gb, "path": options.volume_path}}
    body: dict[str, Any] = {
        "name": pod_name(job_id),
        "image": options.image,
        "gpu": {"id": gpu_type, "count": options.gpu_count},
        "cloud": options.cloud,
        "disk": options.disk_gb,
        "mounts": mounts,
        "env": {"JOB_ID": job_id, "REDIS_URL": pod_redis_url, SCRIPT_ENV: encode_script(script)},
        "args": start_args(options.volume_path),
    }
    if options.data_centers:
        body["dataCenterIds"] = list(options.data_centers)
    return body


def build_request(
    job_id: str, script: str, pod_redis_url: str, api_key: str, options: LaunchOptions
) -> dict[str, Any]:
    """Return the HTTP request (method, url, headers, json) for the first GPU type."""
    return {
        "method": "POST",
        "url": f"{options.api_url.rstrip('/')}/pods",
        "headers": {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        "json": create_pod_body(job_id, script, pod_redis_url, options, options.gpu_types[0]),
    }


def masked(request: dict[str, Any], secrets: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Return a copy of ``request`` safe to print: no API key, no Redis password, no script."""
    safe = copy.deepcopy(request)
    safe["headers"]["Authorization"] = f"Bearer {MASK}"
    env = safe["json"]["env"]
    env["REDIS_URL"] = mask(env["REDIS_URL"], secrets)
    env[SCRIPT_ENV] = f"<gzip+base64 of the pod script, {len(env[SCRIPT_ENV])} characters>"
    return safe


def launch_pod(
    client: RunPodClient, body_for: Callable[[str], dict[str, Any]], gpu_types: tuple[str, ...]
) -> tuple[dict[str, Any], str]:
    """Create the pod on the first of ``gpu_types`` that RunPod places.

    Args:
        client: the RunPod client (it retries 429 and 5xx in place).
        body_for: the create body for one GPU type.
        gpu_types: the candidates, most preferred first.

    Returns:
        ``(pod, gpu_type)``: RunPod's created pod (it echoes the environment: never print
        it whole) and the GPU type that placed.

    Raises:
        LaunchError: when no GPU type placed, on 402 (balance), 422 (this body is wrong: its
            errors are listed) or when 429/5xx retries ran out.
    """
    refusals = []
    for gpu_type in gpu_types:
        try:
            return client.create_pod(body_for(gpu_type)), gpu_type
        except RunPodError as exc:
            if exc.status in PLACEMENT_REFUSED:
                refusals.append(f"{gpu_type}: {exc.status} {exc.title}: {exc.detail}")
                continue
            raise LaunchError(_why(exc), pod_may_exist=exc.ambiguous) from None
    raise LaunchError(
        "RunPod placed none of the GPU types (" + "; ".join(refusals) + "). A 400 on every type"
        " usually means the request breaks a rule: read the last detail."
    )


def _why(exc: RunPodError) -> str:
    if exc.status == 402:
        return f"{exc}. Insufficient balance: no GPU type can be placed; add funds and retry."
    if exc.status == 422:
        return f"{exc}. RunPod's contract refuses this request: a bug in ckpt-pipeline."
    if exc.transient:
        return f"{exc}. Gave up after retries; try again later."
    return str(exc)
