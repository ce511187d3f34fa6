"""producer/ stays embeddable: standard library, redis and transformers only, and no scoring."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PRODUCER_DIR = Path(__file__).resolve().parent.parent / "producer"
PRODUCER_FILES = sorted(PRODUCER_DIR.glob("*.py"))
ALLOWED_THIRD_PARTY = {"redis", "transformers"}


def imported_roots(tree: ast.AST) -> set[str]:
    """Top-level package names of every absolute import in the tree (function bodies too)."""
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_producer_files_are_found() -> None:
    names = {path.name for path in PRODUCER_FILES}
    assert {"__init__.py", "wire.py", "events.py", "spool.py", "publisher.py"} <= names
    assert "callback.py" in names


@pytest.mark.parametrize("path", PRODUCER_FILES, ids=lambda p: p.name)
def test_producer_imports_only_stdlib_redis_and_transformers(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    third_party = imported_roots(tree) - set(sys.stdlib_module_names)
    assert third_party <= ALLOWED_THIRD_PARTY, f"{path.name} imports {sorted(third_party)}"
    assert "pydantic" not in imported_roots(tree)


# What computing a score takes: the scorer's names, and exp() (the perplexity term). The
# producer reads scores the scorer decided (the closed loop); it must never compute one.
SCORING_NAMES = {"score_eval", "epochs_without_improvement", "get_profile", "Profile", "exp"}
SCORING_NAMES |= {"decide", "summarize", "ranking", "scoring", "compute_score"}


@pytest.mark.parametrize("path", PRODUCER_FILES, ids=lambda p: p.name)
def test_producer_defines_no_scoring_function(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    assert names or path.name == "__init__.py"
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    used |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert (set(names) | used) & SCORING_NAMES == set()
    # Nothing here is named for scoring either: the producer only carries the scorer's values.
    assert [name for name in names if "score" in name.lower()] == []


def test_public_names_import() -> None:
    from producer import CheckpointEventsCallback, EventPublisher

    assert CheckpointEventsCallback.__module__ == "producer.callback"
    assert EventPublisher.__module__ == "producer.publisher"


def test_publisher_loads_without_pydantic_transformers_or_our_other_packages() -> None:
    # A fresh interpreter: what the event path pulls in when embedded in a pod script.
    code = (
        "import sys, producer, producer.publisher, producer.events, producer.spool;"
        "bad = sorted({m.split('.')[0] for m in sys.modules}"
        " & {'pydantic', 'transformers', 'torch', 'scorer_worker', 'sink', 'remote'});"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PRODUCER_DIR.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == ""
