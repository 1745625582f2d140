"""The sample application: a `tasks` table in its own migration namespace.

Every function takes the `DbService` and speaks only portable SQL (`db.execute`,
`db.query`, `db.query_one` with ``:name`` parameters), so the same code runs on an
SQLite file and on PostgreSQL. Rows come back as dicts with typed values: `labels`
as the list or dict that went in, `created_at` / `updated_at` as aware UTC datetimes.

Run it: ``python examples/tasks_app/app.py [URL]`` (default: an SQLite file here).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shareddb import DbService
from shareddb.errors import InvalidArgumentError

NAMESPACE = "tasks_app"
# Holds postgres/ and sqlite/ subfolders; shareddb picks the one for the engine.
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
STATUSES = ("open", "doing", "done")

Labels = list[Any] | dict[str, Any]
Task = dict[str, Any]


def open_db(url: str) -> DbService:
    """A service on `url` with this app's namespace, migrated. Close it (or use ``with``)."""
    db = DbService(url, schema_dirs={NAMESPACE: MIGRATIONS})
    db.initialize()  # applies shareddb's migrations, then tasks_app/0001_tasks.sql
    return db


def add_task(
    db: DbService,
    qualified_task_id: str,
    title: str,
    labels: Labels | None = None,
    *,
    now: datetime | None = None,
) -> Task:
    """Insert a new open task and return it as stored."""
    now = now or datetime.now(UTC)
    db.execute(
        "INSERT INTO tasks (qualified_task_id, title, status, labels, created_at, updated_at)"
        " VALUES (:id, :title, 'open', :labels, :now, :now)",
        {"id": qualified_task_id, "title": title, "labels": labels or [], "now": now},
    )
    task = get_task(db, qualified_task_id)
    assert task is not None  # just inserted
    return task


def set_status(
    db: DbService, qualified_task_id: str, status: str, *, now: datetime | None = None
) -> bool:
    """Move a task to `status`; False if there is no such task."""
    if status not in STATUSES:
        raise InvalidArgumentError(
            f"task status {status!r} is not one of {', '.join(STATUSES)}",
            fix="pass one of those",
        )
    changed = db.execute(
        "UPDATE tasks SET status = :status, updated_at = :now WHERE qualified_task_id = :id",
        {"status": status, "now": now or datetime.now(UTC), "id": qualified_task_id},
    )
    return changed == 1


def get_task(db: DbService, qualified_task_id: str) -> Task | None:
    """One task by its qualified id, or None."""
    return db.query_one(
        "SELECT * FROM tasks WHERE qualified_task_id = :id", {"id": qualified_task_id}
    )


def open_tasks(db: DbService) -> list[Task]:
    """Tasks not done yet, oldest first."""
    return db.query(
        "SELECT * FROM tasks WHERE status <> 'done' ORDER BY created_at, qualified_task_id"
    )


def all_tasks(db: DbService) -> list[Task]:
    """Every task, by qualified id."""
    return db.query("SELECT * FROM tasks ORDER BY qualified_task_id")


def main(argv: Sequence[str] | None = None) -> int:
    """A short demo: add two tasks, finish one, print what is still open."""
    args = list(sys.argv[1:] if argv is None else argv)
    url = args[0] if args else f"sqlite:///{Path.cwd() / 'tasks_app.db'}"
    with open_db(url) as db:
        if get_task(db, "md#1") is None:  # a second run finds them there
            add_task(db, "md#1", "Write the README", ["docs"])
            add_task(db, "gh#2", "Fix the flaky test", {"area": "ci", "priority": 1})
        set_status(db, "md#1", "done")
        for task in open_tasks(db):
            print(task["qualified_task_id"], task["status"], task["title"], task["labels"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
