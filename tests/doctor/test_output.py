"""explain, the CLI (exit codes, formats, one-line errors), the JSON schema and the HTML file."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from hotpath.doctor import SCHEMA, DoctorError, FixKind, diagnose, explain
from hotpath.doctor._cli import app
from hotpath.testing import ModuleDatabase

from .conftest import connect, flush_stats

runner = CliRunner()


@pytest.fixture(scope="module")
def db(hotpath_db: ModuleDatabase) -> str:
    with connect(hotpath_db.url) as conn:
        conn.execute("CREATE TABLE parents (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE kids (id int, parent_id int REFERENCES parents)")
        conn.execute(
            "CREATE TABLE big AS SELECT g AS id, g % 100 AS a, md5(g::text) AS pad"
            " FROM generate_series(1, 30000) g"
        )
        conn.execute("ANALYZE big")
        for _ in range(3):
            conn.execute("SELECT * FROM big WHERE a = 5")
        flush_stats(conn)
    return hotpath_db.url


def test_explain_plain_and_analyze(db: str) -> None:
    plain = explain(db, "SELECT * FROM big WHERE a = 5")
    assert not plain.analyzed
    assert "Actual Rows" not in str(plain.plan)
    assert plain.table_rows["big"] == 30000
    assert any(f.kind == "seq_scan" and f.columns == ("a",) for f in plain.flags)
    analyzed = explain(db, "SELECT * FROM big WHERE a = 5", analyze=True)
    assert analyzed.analyzed
    assert "rows_removed_by_filter" in {f.kind for f in analyzed.flags}
    healthy = explain(db, "SELECT * FROM parents WHERE id = 1", analyze=True)
    assert healthy.flags == []


def test_explain_analyze_refuses_writes_and_runs_nothing(db: str) -> None:
    # ANALYZE refused: the plain plan, with the reason
    refused = explain(db, "DELETE FROM big", analyze=True)
    assert not refused.analyzed
    assert refused.not_analyzed is not None
    assert "not a SELECT" in refused.not_analyzed
    cte = explain(db, "WITH d AS (DELETE FROM big RETURNING *) SELECT * FROM d", analyze=True)
    assert cte.not_analyzed is not None
    assert "modifies data" in cte.not_analyzed
    # plain EXPLAIN of a write is allowed: it does not run
    explain(db, "DELETE FROM big")
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM big").fetchone() == (30000,)


def test_json_schema_is_stable(db: str) -> None:
    data = orjson.loads(diagnose(db).to_json())
    assert data["schema"] == SCHEMA
    assert set(data) == {
        "schema",
        "database",
        "server_version",
        "user",
        "duration_s",
        "stats_since",
        "checks_run",
        "summary",
        "findings",
        "skipped",
        "top_queries",
    }
    finding = next(f for f in data["findings"] if f["check"] == "fk_without_index")
    assert set(finding) == {
        "check",
        "severity",
        "object",
        "message",
        "evidence",
        "fix",
        "fix_kind",
        "gain",
    }
    assert finding["fix"] == "CREATE INDEX CONCURRENTLY ON kids (parent_id);"
    assert finding["fix_kind"] == "sql"
    assert finding["object"].startswith("kids")  # the JSON keeps its key


def test_finding_kinds_are_typed_and_object_is_a_deprecated_alias(db: str) -> None:
    finding = next(f for f in diagnose(db).findings if f.check == "fk_without_index")
    assert finding.fix_kind is FixKind.SQL
    assert finding.target.startswith("kids")
    with pytest.warns(DeprecationWarning, match=r"Finding\.target"):
        assert finding.object == finding.target


def test_cli_formats_and_fail_on(db: str, tmp_path: Path) -> None:
    text = runner.invoke(app, ["doctor", db, "--only", "fk_without_index"])
    assert text.exit_code == 0
    assert "fk_without_index" in text.output
    # the FK finding is INFO (small table): --fail-on warning passes, and a warning fails it
    assert (
        runner.invoke(
            app, ["doctor", db, "--only", "fk_without_index", "--fail-on", "warning"]
        ).exit_code
        == 0
    )
    failing = runner.invoke(
        app, ["doctor", db, "--only", "missing_indexes", "--fail-on", "warning", "--format", "json"]
    )
    assert failing.exit_code == 1
    assert orjson.loads(failing.output)["summary"]["warning"] == 1
    assert (
        runner.invoke(
            app, ["doctor", db, "--only", "missing_indexes", "--fail-on", "critical"]
        ).exit_code
        == 0
    )
    out = tmp_path / "report.html"
    assert (
        runner.invoke(app, ["doctor", db, "--format", "html", "--output", str(out)]).exit_code == 0
    )
    page = out.read_text()
    assert page.startswith("<!doctype html>")
    assert "<svg" in page
    assert "missing_indexes" in page
    # self-contained: no scripts, no external assets
    assert not re.search(r"<script|<link|src=|href=", page)
    explained = runner.invoke(app, ["explain", db, "SELECT * FROM big WHERE a = 5", "--analyze"])
    assert explained.exit_code == 0
    assert "Seq Scan" in explained.output
    assert "seq_scan" in explained.output


def test_cli_errors_are_one_line(db: str) -> None:
    result = runner.invoke(app, ["doctor", "postgresql://u:pw@127.0.0.1:1/x"])
    assert isinstance(result.exception, DoctorError)
    assert "\n" not in str(result.exception)
    assert "pw" not in str(result.exception)
    result = runner.invoke(app, ["advise", db, "--workload", "missing.sql"])
    assert isinstance(result.exception, DoctorError)


def test_cli_advise_json_from_a_sql_file(db: str, tmp_path: Path) -> None:
    workload = tmp_path / "workload.sql"
    workload.write_text("SELECT * FROM big WHERE a = 5;\nSELECT * FROM parents WHERE id = 1;\n")
    result = runner.invoke(app, ["advise", db, "--workload", str(workload), "--format", "json"])
    assert result.exit_code == 0
    data = orjson.loads(result.output)
    assert data["schema"] == "hotpath.advise/1"
    assert data["hypopg"] is False
    assert "hypopg" in data["hint"]
    assert [s["ddl"] for s in data["suggestions"]] == ["CREATE INDEX CONCURRENTLY ON big (a);"]
    assert data["suggestions"][0]["validated"] is False
