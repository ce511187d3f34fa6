"""Building and sending the RunPod REST request that starts a training pod (trusted side)."""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass
from typing import Any

from .credentials import mask_url

RUNPOD_API_URL = "https://rest.runpod.io/v1"
SCRIPT_ENV = "CKPT_SCRIPT_B64"
POD_SCRIPT_PATH = "/workspace/ckpt_train.py"
POD_PACKAGES = "redis transformers accelerate"


class LaunchError(RuntimeError):
    """RunPod refused the request or could not be reached."""


@dataclass(frozen=True)
class LaunchOptions:
    """Where and on what the pod runs.

    Attributes:
        gpu_type: a RunPod GPU type id.
        image: a container image that has Python and torch.
        gpu_count: GPUs for the pod.
        container_disk_gb: ephemeral disk, which holds the checkpoints.
        cloud_type: ``SECURE`` or ``COMMUNITY``.
        api_url: RunPod's REST API base URL.
    """

    gpu_type: str = "NVIDIA GeForce RTX 4090"
    image: str = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"
    gpu_count: int = 1
    container_disk_gb: int = 50
    cloud_type: str = "SECURE"
    api_url: str = RUNPOD_API_URL


def start_command() -> list[str]:
    """Return the container's start command: install the client packages, decode, run."""
    shell = (
        f"pip install --quiet {POD_PACKAGES} && "
        f'printf %s "${SCRIPT_ENV}" | base64 -d > {POD_SCRIPT_PATH} && '
        f"exec python {POD_SCRIPT_PATH}"
    )
    return ["bash", "-c", shell]


def build_request(
    job_id: str, script: str, pod_redis_url: str, api_key: str, options: LaunchOptions
) -> dict[str, Any]:
    """Return the HTTP request (method, url, headers, json) that creates the pod."""
    body = {
        "name": f"ckpt-{job_id}",
        "imageName": options.image,
        "gpuTypeIds": [options.gpu_type],
        "gpuCount": options.gpu_count,
        "cloudType": options.cloud_type,
        "containerDiskInGb": options.container_disk_gb,
        "env": {
            "JOB_ID": job_id,
            "REDIS_URL": pod_redis_url,
            SCRIPT_ENV: base64.b64encode(script.encode("utf-8")).decode("ascii"),
        },
        "dockerStartCmd": start_command(),
    }
    return {
        "method": "POST",
        "url": f"{options.api_url.rstrip('/')}/pods",
        "headers": {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        "json": body,
    }


def masked(request: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``request`` safe to print: no API key, no Redis password."""
    safe = copy.deepcopy(request)
    safe["headers"]["Authorization"] = "Bearer ***"
    env = safe["json"]["env"]
    env["REDIS_URL"] = mask_url(env["REDIS_URL"])
    script = env[SCRIPT_ENV]
    env[SCRIPT_ENV] = f"<base64 of the pod script, {len(script)} characters>"
    return safe


def send(request: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    """Send the request and return RunPod's JSON answer (the created pod).

    Raises:
        LaunchError: on a connection failure or a non-2xx answer (the message has no secrets).
    """
    import httpx

    try:
        response = httpx.request(
            request["method"], request["url"], headers=request["headers"],
            json=request["json"], timeout=timeout_s,
        )  # fmt: skip
    except httpx.HTTPError as exc:
        raise LaunchError(f"RunPod API unreachable: {type(exc).__name__}") from None
    if response.status_code >= 400:
        raise LaunchError(f"RunPod API answered {response.status_code}: {response.text[:500]}")
    try:
        return response.json()
    except json.JSONDecodeError:
        return {"raw": response.text[:2000]}
