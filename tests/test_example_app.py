"""The sample application in examples/tasks_app, run unchanged on both engines.

The app keeps its own `tasks` table in the `tasks_app` namespace and speaks only
portable SQL. Here it runs on SQLite and PostgreSQL; its tasks are written on SQLite,
moved with ``shareddb copy --schema-dir tasks_app=...``, read back through the app's
own functions on PostgreSQL and compared field by field; a second copy writes
nothing; ``shareddb status`` lists the table with its namespace and row count.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from shareddb.cli import main as cli_main
from shareddb.errors import InvalidArgumentError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import tasks_app  # found through the path above

BASE = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))
LABELS: tuple[Any, ...] = (
    ["bug", "p1"],
    {"area": "db", "nested": {"k": [1, 2.5, None, True]}, "quote": 'it\'s "q" %s ? $1'},
    [],
    {"big": 9007199254740993, "text": "日本"},
)


def fill(db: Any, n: int = 12) -> None:
    """`n` tasks through the app, some finished or started later, some offsets not UTC."""
    for i in range(n):
        created = BASE + timedelta(minutes=i, microseconds=i)
        tasks_app.add_task(
            db,
            f"md#{i}" if i % 3 else f"gh#{i}",
            f"Task {i}: it's ünïcode; --",
            LABELS[i % len(LABELS)],
            now=created.astimezone(PLUS_TWO) if i % 2 else created,
        )
        if i % 3 == 1:
            tasks_app.set_status(db, f"md#{i}", "done", now=created + timedelta(hours=1))
        elif i % 3 == 2:
            tasks_app.set_status(db, f"md#{i}", "doing", now=created + timedelta(hours=2))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    """``shareddb ARGS --json`` in this process; its JSON output."""
    capsys.readouterr()
    code = cli_main([*args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err + out
    return json.loads(out)


def test_the_app_runs_unchanged_on_each_engine(db_url: str) -> None:
    with tasks_app.open_db(db_url) as db:
        task = tasks_app.add_task(db, "md#253", "Fix it", ["bug"], now=BASE.astimezone(PLUS_TWO))
        assert task == {
            "qualified_task_id": "md#253",
            "title": "Fix it",
            "status": "open",
            "labels": ["bug"],
            "created_at": BASE,
            "updated_at": BASE,
        }
        assert task["created_at"].tzinfo is not None
        later = BASE + timedelta(days=1)
        tasks_app.add_task(db, "gh#1", "Older", {"area": "ci"}, now=BASE - timedelta(days=1))
        assert [t["qualified_task_id"] for t in tasks_app.open_tasks(db)] == ["gh#1", "md#253"]

        assert tasks_app.set_status(db, "md#253", "done", now=later)
        assert not tasks_app.set_status(db, "md#404", "done")
        done = tasks_app.get_task(db, "md#253")
        assert done is not None
        assert (done["status"], done["created_at"], done["updated_at"]) == ("done", BASE, later)
        assert [t["qualified_task_id"] for t in tasks_app.open_tasks(db)] == ["gh#1"]
        assert tasks_app.get_task(db, "md#404") is None

        with pytest.raises(InvalidArgumentError, match="'closed'"):
            tasks_app.set_status(db, "gh#1", "closed")
        assert tasks_app.get_task(db, "gh#1")["status"] == "open"  # type: ignore[index]


@pytest.mark.postgres
def test_copy_moves_the_apps_tasks_equal_and_status_lists_them(
    sqlite_url: str, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with tasks_app.open_db(sqlite_url) as db:
        fill(db)
        expected = tasks_app.all_tasks(db)
        expected_open = [t["qualified_task_id"] for t in tasks_app.open_tasks(db)]
    assert len(expected) == 12
    assert len(expected_open) == 8

    schema_dir = f"{tasks_app.NAMESPACE}={tasks_app.MIGRATIONS}"
    copy = ("copy", "--from", sqlite_url, "--to", pg_url, "--schema-dir", schema_dir)
    report = run(capsys, *copy)
    tasks = {t["table"]: t for t in report["tables"]}["tasks"]
    assert (tasks["namespace"], tasks["read"], tasks["inserted"]) == ("tasks_app", 12, 12)

    with tasks_app.open_db(pg_url) as db:
        actual = tasks_app.all_tasks(db)
        assert [t["qualified_task_id"] for t in tasks_app.open_tasks(db)] == expected_open
    # Compared by id: text collation may order ids differently on the two engines.
    by_id = {t["qualified_task_id"]: t for t in actual}
    assert sorted(by_id) == sorted(t["qualified_task_id"] for t in expected)
    for want in expected:
        got = by_id[want["qualified_task_id"]]
        assert got.keys() == want.keys()
        for column, value in want.items():
            assert got[column] == value, (want["qualified_task_id"], column)
            assert type(got[column]) is type(value), (want["qualified_task_id"], column)
        for column in ("created_at", "updated_at"):
            assert got[column].utcoffset() is not None
    # Sanity: the values are the typed ones the app wrote, not strings.
    first = by_id["gh#0"]
    assert (first["labels"], first["created_at"], first["status"]) == (LABELS[0], BASE, "open")

    again = run(capsys, *copy)
    assert all(t["written"] == 0 for t in again["tables"]), again
    assert {t["table"]: t for t in again["tables"]}["tasks"]["unchanged"] == 12

    for url in (sqlite_url, pg_url):
        status = run(capsys, "status", "--url", url, "--schema-dir", schema_dir)
        table = {t["name"]: t for t in status["tables"]}["tasks"]
        assert (table["namespace"], table["rows"]) == ("tasks_app", 12)
        assert "tasks_status_idx" in {i["name"] for i in table["indexes"]}
