"""sink.migrate without a database: how migration files are split into statements (sqlparse)
and what a file's checksum is."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sink.migrate import MIGRATIONS_DIR, MigrationError, load_migrations, split_statements


def test_semicolons_in_a_dollar_body_a_string_and_a_comment_stay_in_one_statement() -> None:
    text = """
    DO $body$
    BEGIN
        -- not the end; of anything
        RAISE NOTICE 'one; two'; /* nor; this */
        PERFORM 1;
    END
    $body$;
    SELECT 2;
    """
    assert split_statements(text) == [
        "DO $body$\n    BEGIN\n        -- not the end; of anything\n"
        "        RAISE NOTICE 'one; two'; /* nor; this */\n        PERFORM 1;\n    END\n    $body$",
        "SELECT 2",
    ]


def test_statements_lose_their_comments_and_semicolon_and_keep_quoted_text() -> None:
    text = """
    -- a comment; with a semicolon
    SELECT 'a;b', "odd;name" FROM t; -- after it; on the same line
    /* block; comment */ SELECT 'it''s; fine' -- before it
    ;
    -- a last comment; alone
    """
    assert split_statements(text) == [
        """SELECT 'a;b', "odd;name" FROM t""",
        "SELECT 'it''s; fine'",
    ]


def test_a_statement_of_many_tokens_is_split_whole() -> None:
    # sqlparse.format(strip_comments=True) refuses statements of more than 10,000 tokens.
    rows = ", ".join(f"({i}, 'r;{i}')" for i in range(1500))
    statements = split_statements(f"INSERT INTO t VALUES {rows}; -- seed\nSELECT 1;")
    assert statements == [f"INSERT INTO t VALUES {rows}", "SELECT 1"]


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT 1 /* outer /* nested; */ still; */;\nSELECT 2;", "nested block comments"),
        ("SELECT 5 # 3;\nSELECT 2;", "# operator"),
        ("SELECT 'C:\\';\nSELECT 'x';", "backslash before a quote"),
    ],
    ids=["nested-comment", "xor-operator", "backslash-quote"],
)
def test_a_file_sqlparse_would_split_otherwise_than_postgresql_is_refused(
    tmp_path: Path, sql: str, reason: str
) -> None:
    # PostgreSQL nests block comments, reads `#` as XOR and `\` as a plain character in a
    # standard string; sqlparse does not, so it could run the wrong statements.
    (tmp_path / "001_x.sql").write_text(sql)

    with pytest.raises(MigrationError, match=rf"^001_x\.sql: .*{reason}"):
        load_migrations(tmp_path)


def test_shipped_files_split_into_bare_statements_with_the_file_checksum() -> None:
    migrations = load_migrations()

    assert [m.name for m in migrations] == sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
    for migration in migrations:
        data = (MIGRATIONS_DIR / migration.name).read_bytes()
        # The checksum of the whole file, comments included, as recorded by earlier runs: a
        # different one would make every applied migration look edited.
        assert migration.checksum == hashlib.sha256(data).hexdigest()
        assert migration.statements
        for statement in migration.statements:
            assert "--" not in statement and "/*" not in statement
            assert statement == statement.strip() and not statement.endswith(";")
    by_name = {m.name: m for m in migrations}
    assert len(by_name["001_checkpoint_scoring.sql"].statements) == 40
    assert by_name["001_checkpoint_scoring.sql"].transactional
    index = by_name["002_indexes.sql"]
    assert not index.transactional
    assert index.statements == (
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS local_training_metrics_job_step_idx\n"
        "    ON local_training_metrics (job_id, step)",
    )
