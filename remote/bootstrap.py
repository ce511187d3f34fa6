"""The pod's start command: RunPod v2's single ``args`` string, and the script it starts.

RunPod v2 carries the start command as one string, ``args`` ("arguments passed to the
container entrypoint"). RunPod splits it into words the way a POSIX shell would, without
expanding anything (shlex; a JSON object is also accepted), and the words become the
container's command: the arguments of the image's ``ENTRYPOINT``, or the program itself
when the image has none. No shell is involved unless the words start one, so ``&&``, ``|``,
``>`` and ``$VAR`` in a bare string would reach ``pip`` as package names.

So ``args`` is ``sh -c '<script>'``: three words under any shlex-like splitter, the second
and third unchanged because the script holds no single quote. ``sh`` (dash on Ubuntu) runs
the script, which:

1. enters the persistent volume, so a relative ``output_dir`` lands on it;
2. pins ``torch`` to the image's own build through a constraints file (pip never swaps the
   image's CUDA build for another), then installs exactly :data:`POD_PACKAGES`, each pinned
   to the version of the environment that launched the pod (which validated the spec);
3. decodes the pod script from ``$CKPT_SCRIPT_GZ_B64`` (gzip, then base64: a Linux
   environment string may hold at most 128 KiB) and ``exec``s it with ``python3``, so the
   training process is the container's main process and its exit status the container's.
"""

from __future__ import annotations

import base64
import gzip
import shlex
from importlib.metadata import version

SCRIPT_ENV = "CKPT_SCRIPT_GZ_B64"
POD_PACKAGES = ("redis", "transformers", "accelerate")
"""What the pod installs next to the image's torch: what the rendered script imports."""

STATE_DIR = ".ckpt-pod"
"""Folder (on the volume) for the decoded script and the constraints file."""

MAX_ENV_VALUE_BYTES = 128 * 1024 - 1024
"""Linux refuses to start a program with an environment string over 128 KiB (MAX_ARG_STRLEN)."""


def pod_requirements() -> list[str]:
    """Return ``name==version`` for each of :data:`POD_PACKAGES`, as installed here."""
    return [f"{name}=={version(name)}" for name in POD_PACKAGES]


def encode_script(script: str) -> str:
    """Return the value of :data:`SCRIPT_ENV` for ``script`` (gzip, then base64).

    Raises:
        ValueError: if the value would not fit in one environment string.
    """
    encoded = base64.b64encode(gzip.compress(script.encode("utf-8"), mtime=0)).decode("ascii")
    if len(encoded) + len(SCRIPT_ENV) + 1 > MAX_ENV_VALUE_BYTES:
        raise ValueError(
            f"the compressed pod script is {len(encoded)} bytes of base64: over the"
            f" {MAX_ENV_VALUE_BYTES} bytes one environment variable may hold"
        )
    return encoded


def shell_script(volume_path: str, requirements: list[str]) -> str:
    """Return the POSIX shell script the pod runs at start (see the module docstring)."""
    state = STATE_DIR
    steps = [
        f"cd {shlex.quote(volume_path)}",
        f"mkdir -p {state}",
        # The installed distribution's version, which is what pip compares with; reading
        # it is instant, importing torch is not.
        'TORCH=$(python3 -c "import sys, importlib.metadata as m; print(m.version(sys.argv[1]))"'
        " torch)",
        f'echo "torch==$TORCH" > {state}/constraints.txt',
        "pip install --quiet --no-input --constraint"
        f" {state}/constraints.txt {' '.join(shlex.quote(r) for r in requirements)}",
        f'printf %s "${SCRIPT_ENV}" | base64 -d | gzip -dc > {state}/pod.py',
        f"exec python3 {state}/pod.py",
    ]
    return " && ".join(steps)


def start_args(volume_path: str, requirements: list[str] | None = None) -> str:
    """Return the ``args`` string of the pod: ``sh -c '<shell_script>'``.

    Raises:
        ValueError: if the script would not survive the split into words unchanged.
    """
    script = shell_script(volume_path, pod_requirements() if requirements is None else requirements)
    if "'" in script:
        raise ValueError(f"the start script must not contain a single quote: {script!r}")
    args = f"sh -c '{script}'"
    if shlex.split(args) != ["sh", "-c", script]:  # what RunPod's split will make of it
        raise ValueError(f"the start command does not split into sh -c SCRIPT: {args!r}")
    return args
