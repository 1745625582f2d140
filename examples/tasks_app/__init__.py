"""tasks_app: a tiny application keeping its own `tasks` table on a shareddb service."""

from tasks_app.app import (
    MIGRATIONS,
    NAMESPACE,
    STATUSES,
    add_task,
    all_tasks,
    get_task,
    open_db,
    open_tasks,
    set_status,
)

__all__ = [
    "MIGRATIONS",
    "NAMESPACE",
    "STATUSES",
    "add_task",
    "all_tasks",
    "get_task",
    "open_db",
    "open_tasks",
    "set_status",
]
