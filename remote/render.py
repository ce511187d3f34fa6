"""Rendering the self-contained pod script (trusted side).

The script embeds ``producer/``, ``remote/pod_main.py`` and the training program
(``remote/training.py`` and the modules it imports: ``schema.py``, ``spec.py``,
``arguments.py``, ``dataset.py``) verbatim, writes them to a temporary folder on the pod and
runs ``pod_main.main(SPEC)``. The pod needs only ``redis``, ``torch`` and ``transformers``
(+ ``accelerate``). No scoring code travels.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import producer

REMOTE_DIR = Path(__file__).parent
PRODUCER_DIR = Path(producer.__file__).parent
# Every module of producer/ travels, so a module added there (and imported by the callback
# or the publisher one day) cannot be missing on the pod. producer/ depends only on the
# standard library, redis and transformers (DESIGN section 2), so all of it may travel.
PRODUCER_MODULES = tuple(sorted(path.name for path in PRODUCER_DIR.glob("*.py")))
# The pod has only the files listed here: a module that pod_main.py imports, directly or through
# training.py, and that is missing here fails with ImportError on the pod, not in the tests.
REMOTE_MODULES = (
    "__init__.py",
    "schema.py",
    "arguments.py",
    "spec.py",
    "dataset.py",
    "training.py",
    "pod_main.py",
)

_BOOTSTRAP = '''
def _install_embedded_modules():
    """Write the embedded modules to a private folder and put it first on sys.path."""
    import sys
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="ckpt-pod-"))
    for relative, source in EMBEDDED.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source, encoding="utf-8")
    sys.path.insert(0, str(root))


if __name__ == "__main__":
    _install_embedded_modules()
    from remote.pod_main import main

    raise SystemExit(main(SPEC))
'''


class RenderError(ValueError):
    """A source file cannot be embedded verbatim."""


def embedded_sources() -> dict[str, str]:
    """Return the files the script embeds, keyed by their path inside the script."""
    files = {f"producer/{name}": PRODUCER_DIR / name for name in PRODUCER_MODULES}
    files |= {f"remote/{name}": REMOTE_DIR / name for name in REMOTE_MODULES}
    return {key: path.read_text(encoding="utf-8") for key, path in files.items()}


def render_script(spec: dict[str, Any]) -> str:
    """Return the pod script for a validated ``spec``.

    Raises:
        RenderError: if a source cannot be embedded as a raw string literal.
    """
    lines = [
        "#!/usr/bin/env python3",
        f'"""Checkpoint-pipeline pod script for job {spec["job_id"]}: train and publish events.',
        "",
        "Rendered by `ckpt-pipeline remote render`. Needs redis, torch, transformers, accelerate.",
        "Environment: REDIS_URL (the job's publish-only credentials), JOB_ID.",
        '"""',
        "",
        "import json",
        "",
        f"SPEC = json.loads({_literal(json.dumps(spec, indent=2))})",
        "",
        "EMBEDDED = {",
        *(f"    {key!r}: {_literal(source)}," for key, source in embedded_sources().items()),
        "}",
    ]
    return "\n".join(lines) + "\n" + _BOOTSTRAP


def _literal(text: str) -> str:
    # A raw triple-quoted literal keeps the file readable and byte-for-byte identical.
    if "'''" in text or text.endswith("\\"):
        raise RenderError("source contains ''' or ends with a backslash; cannot embed verbatim")
    return f"r'''{text}'''"


def read_embedded(script: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Return ``(spec, embedded sources)`` of a rendered script, without running it."""
    spec: dict[str, Any] = {}
    embedded: dict[str, str] = {}
    for node in ast.parse(script).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name == "EMBEDDED":
                embedded = ast.literal_eval(node.value)
            elif name == "SPEC" and isinstance(node.value, ast.Call):
                spec = json.loads(ast.literal_eval(node.value.args[0]))
    return spec, embedded
