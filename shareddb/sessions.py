"""Sessions: the application's named working sessions, stored through the shared DbService.

A session is a name (the primary key) bound to a repository, optionally a branch and
the qualified task id it works on (``md#253``). `SessionStorage` is the hand-written
SQL for the ``sessions`` table on both backends; it never opens its own connections.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, LiteralString, cast

from shareddb._core.text import check_stored_text
from shareddb._core.types import Connection
from shareddb.errors import InvalidSessionError, SessionExistsError, SessionNotFoundError

if TYPE_CHECKING:
    from shareddb._core.service import DbService

__all__ = ["AsyncSessionStorage", "SessionRecord", "SessionStorage"]

logger = logging.getLogger("shareddb.sessions")

# Fields `update()` may change; the others are the key or kept by shareddb.
UPDATABLE_FIELDS: Final = ("repo_name", "repo_url", "branch", "task_id")
_FIXED_FIELDS: Final[Mapping[str, str]] = {
    "session": "it is the primary key; add() a session under the new name, then "
    "delete() the old one",
    "created_at": "it is set once by add()",
    "updated_at": "update() sets it to the time of the change",
}
_TICK: Final = timedelta(microseconds=1)
# session, repo_name and task_id are indexed, and a PostgreSQL btree entry holds at most
# about 2,700 bytes: both backends refuse longer values of these fields the same way.


@dataclass(frozen=True, kw_only=True)
class SessionRecord:
    """One row of ``sessions``; construct it with keywords.

    `created_at` and `updated_at` are timezone-aware UTC datetimes with microsecond
    precision. Leave them None for `SessionStorage.add()` to fill in with the current
    time; set them only to import sessions that already have a history.
    Invalid values raise InvalidSessionError here, before any database is involved.
    """

    session: str
    repo_name: str
    repo_url: str
    branch: str | None = None
    task_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def __post_init__(self) -> None:
        _check_text("session name", self.session, indexed=True)
        what = f"session {self.session!r}"
        _check_text(f"{what}: repo_name", self.repo_name, indexed=True)
        _check_text(f"{what}: repo_url", self.repo_url)
        _check_text(f"{what}: branch", self.branch, optional=True)
        _check_text(f"{what}: task_id", self.task_id, optional=True, indexed=True)
        for name in ("created_at", "updated_at"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, datetime):
                raise InvalidSessionError(
                    f"{what}: {name} must be a datetime or None, got {type(value).__name__}; "
                    "pass a timezone-aware datetime, or None to use the current time"
                )
            if value.utcoffset() is None:
                raise InvalidSessionError(
                    f"{what}: {name}={value.isoformat()} has no time zone; pass an aware "
                    "datetime such as datetime.now(datetime.UTC)"
                )
        if (
            self.created_at is not None
            and self.updated_at is not None
            and self.updated_at < self.created_at
        ):
            raise InvalidSessionError(
                f"{what}: updated_at={self.updated_at.isoformat()} is before "
                f"created_at={self.created_at.isoformat()}; pass an updated_at at or after "
                "created_at"
            )


def _check_text(what: str, value: object, *, optional: bool = False, indexed: bool = False) -> None:
    fix = "pass non-empty text, or None for no value" if optional else "pass non-empty text"
    if optional and value is None:
        return
    if not isinstance(value, str):
        raise InvalidSessionError(f"{what} must be a str, got {type(value).__name__}; {fix}")
    if not value:
        raise InvalidSessionError(f"{what} is empty; {fix}")
    check_stored_text(what, value, InvalidSessionError, indexed=indexed)


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


# -- SQL: written once with %s placeholders; the engine's dialect swaps in its own ------------

_SELECT: Final = (
    "SELECT session, repo_name, repo_url, branch, task_id, created_at, updated_at FROM sessions"
)
_ORDER: Final = " ORDER BY created_at DESC, seq DESC"
_GET: Final = _SELECT + " WHERE session = %s"
_UPDATE: Final = (
    "UPDATE sessions SET repo_name = %s, repo_url = %s, branch = %s, task_id = %s, "
    "updated_at = %s WHERE session = %s"
)
_DELETE: Final = "DELETE FROM sessions WHERE session = %s"


class SessionStorage:
    """The ``sessions`` table: add, read, list, update and delete named sessions.

    Takes the application's DbService (usually `get_shared_db()`) and runs every
    method in its own short transaction, or in the caller's when given ``conn=``
    from `DbService.transaction()`, so that a unit of work can span domains::

        with db.transaction() as conn:
            sessions.add(SessionRecord(session="fix-253", ...), conn=conn)
            vectors.upsert("md#253", embedding, conn=conn)

    The constructor does no I/O; the table comes from `DbService.initialize()`.
    Safe to share between threads.
    """

    def __init__(self, db: DbService) -> None:
        self._db = db
        self._engine = db.engine
        self._dialect = db.engine.dialect

    def __repr__(self) -> str:
        return f"<SessionStorage on {self._db!r}>"

    @property
    def db(self) -> DbService:
        """The DbService this storage runs on."""
        return self._db

    def _record(self, row: tuple[Any, ...]) -> SessionRecord:
        session, repo_name, repo_url, branch, task_id, created_at, updated_at = row
        return SessionRecord(
            session=session,
            repo_name=repo_name,
            repo_url=repo_url,
            branch=branch,
            task_id=task_id,
            created_at=self._engine.read_time(created_at),
            updated_at=self._engine.read_time(updated_at),
        )

    def add(self, record: SessionRecord, *, conn: Connection | None = None) -> SessionRecord:
        """Store a new session and return it with `created_at` and `updated_at` filled.

        Missing timestamps become the current UTC time (`updated_at` defaults to
        `created_at`); given ones are stored as UTC. Raises SessionExistsError, and
        changes nothing, when a session of that name exists: use `update()` to
        change it. Joins the caller's transaction when given ``conn=``.
        """
        if not isinstance(record, SessionRecord):
            raise InvalidSessionError(
                f"add() takes a SessionRecord, got {type(record).__name__}; build one with "
                "SessionRecord(session=..., repo_name=..., repo_url=...)"
            )
        d = self._dialect
        with self._engine.joined(conn, error=InvalidSessionError) as c:
            # Stamped inside the transaction (on SQLite: under the write lock), so
            # created_at follows the insertion order that seq records.
            created = _utc(record.created_at) if record.created_at else _now()
            updated = _utc(record.updated_at) if record.updated_at else created
            stored = replace(record, created_at=created, updated_at=updated)
            cur = c.execute(
                d.session_insert,
                (
                    stored.session,
                    stored.repo_name,
                    stored.repo_url,
                    stored.branch,
                    stored.task_id,
                    self._engine.write_time(created),
                    self._engine.write_time(updated),
                ),
            )
            if cur.rowcount != 1:
                raise SessionExistsError(
                    f"session {record.session!r} already exists; pick another name, or "
                    "update() or delete() the existing session"
                )
        logger.debug("added session %r", stored.session)
        return stored

    def get(self, name: str, *, conn: Connection | None = None) -> SessionRecord | None:
        """The session called `name`, or None when there is none."""
        _check_text("session name", name, indexed=True)
        statement = self._dialect.sql(_GET)
        row = self._engine.read(
            lambda c: c.execute(statement, (name,)).fetchone(), conn, error=InvalidSessionError
        )
        return None if row is None else self._record(row)

    def list(
        self,
        *,
        repo_name: str | None = None,
        task_id: str | None = None,
        limit: int | None = None,
        conn: Connection | None = None,
    ) -> builtins.list[SessionRecord]:
        """Sessions, newest first, optionally only those of a repository and/or a task.

        Sessions created in the same microsecond list in reverse insertion order.
        `limit` caps the number returned (None: all).
        """
        conditions: builtins.list[LiteralString] = []
        params: builtins.list[Any] = []
        if repo_name is not None:
            _check_text("repo_name filter", repo_name, indexed=True)
            conditions.append("repo_name = %s")
            params.append(repo_name)
        if task_id is not None:
            _check_text("task_id filter", task_id, indexed=True)
            conditions.append("task_id = %s")
            params.append(task_id)
        query: LiteralString = _SELECT
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        query += _ORDER
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise InvalidSessionError(
                    f"limit={limit!r} must be a whole number >= 0; pass None for no limit"
                )
            query += " LIMIT %s"
            params.append(limit)
        statement = self._dialect.sql(query)
        rows = self._engine.read(
            lambda c: c.execute(statement, params).fetchall(), conn, error=InvalidSessionError
        )
        return [self._record(row) for row in rows]

    def get_by_task(self, task_id: str, *, conn: Connection | None = None) -> SessionRecord | None:
        """The newest session working on `task_id` (``md#253``), or None when there is none.

        Several sessions may share a task; use ``list(task_id=...)`` for all of them.
        """
        _check_text("task_id", task_id, indexed=True)
        found = self.list(task_id=task_id, limit=1, conn=conn)
        return found[0] if found else None

    def update(
        self, name: str, *, conn: Connection | None = None, **changes: str | None
    ) -> SessionRecord:
        """Change some of `repo_name`, `repo_url`, `branch`, `task_id`; return the new record.

        Sets `updated_at` to the current time (always later than its previous value;
        with no changes this only touches the session). Raises InvalidSessionError for
        an unknown or fixed field or a bad value, and SessionNotFoundError when no
        session is called `name`; in both cases nothing changes.
        """
        _check_text("session name", name, indexed=True)
        for field_name in changes:
            if field_name in _FIXED_FIELDS:
                raise InvalidSessionError(
                    f"session {name!r}: update() can't change {field_name}: "
                    f"{_FIXED_FIELDS[field_name]}"
                )
            if field_name not in UPDATABLE_FIELDS:
                raise InvalidSessionError(
                    f"session {name!r}: update() got unknown field {field_name!r}; the "
                    f"fields it changes are {', '.join(UPDATABLE_FIELDS)}"
                )
        for field_name in ("repo_name", "repo_url"):
            if field_name in changes:
                _check_text(
                    f"session {name!r}: {field_name}",
                    changes[field_name],
                    indexed=field_name == "repo_name",
                )
        for field_name in ("branch", "task_id"):
            if field_name in changes:
                _check_text(
                    f"session {name!r}: {field_name}",
                    changes[field_name],
                    optional=True,
                    indexed=field_name == "task_id",
                )
        d = self._dialect
        with self._engine.joined(conn, error=InvalidSessionError) as c:
            row = c.execute(d.sql(_GET) + d.session_for_update, (name,)).fetchone()
            if row is None:
                raise SessionNotFoundError(
                    f"session {name!r} does not exist; add() it first, or check the name"
                )
            current = self._record(row)
            assert current.updated_at is not None
            touched = max(_now(), current.updated_at + _TICK)
            new = replace(current, updated_at=touched, **cast(dict[str, Any], changes))
            c.execute(
                d.sql(_UPDATE),
                (
                    new.repo_name,
                    new.repo_url,
                    new.branch,
                    new.task_id,
                    self._engine.write_time(touched),
                    name,
                ),
            )
        logger.debug("updated session %r: %s", name, sorted(changes))
        return new

    def delete(self, name: str, *, conn: Connection | None = None) -> bool:
        """Delete the session called `name`; True if it existed, False if there was none."""
        _check_text("session name", name, indexed=True)
        with self._engine.joined(conn, error=InvalidSessionError) as c:
            deleted: int = c.execute(self._dialect.sql(_DELETE), (name,)).rowcount
        if deleted:
            logger.debug("deleted session %r", name)
        return deleted > 0


# The async twin, defined over SessionStorage (imported last: it imports this module).
from shareddb._async.sessions import AsyncSessionStorage  # noqa: E402

AsyncSessionStorage.__module__ = __name__
