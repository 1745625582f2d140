"""AsyncSessionStorage: `SessionStorage`, awaited (as `AsyncVectorStorage` is).

Each method hands its arguments, untouched, to the same method of a `SessionStorage`
on the service's sync implementation: every check and error is the sync class's own.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from shareddb.sessions import SessionRecord, SessionStorage

if TYPE_CHECKING:
    from shareddb._async.service import AsyncDbService


class AsyncSessionStorage:
    """`SessionStorage` for asyncio: every method a coroutine with the same arguments."""

    def __init__(self, db: AsyncDbService) -> None:
        self._db = db
        self._sync = SessionStorage(db.sync_service)

    def __repr__(self) -> str:
        return f"<AsyncSessionStorage on {self._db!r}>"

    @property
    def db(self) -> AsyncDbService:
        return self._db

    async def add(self, record: SessionRecord, *, conn: Any = None) -> SessionRecord:
        return await self._db.run(self._sync.add, record, conn=conn)

    async def get(self, name: str, *, conn: Any = None) -> SessionRecord | None:
        return await self._db.run(self._sync.get, name, conn=conn)

    async def list(
        self,
        *,
        repo_name: str | None = None,
        task_id: str | None = None,
        limit: int | None = None,
        conn: Any = None,
    ) -> builtins.list[SessionRecord]:
        return await self._db.run(
            self._sync.list, repo_name=repo_name, task_id=task_id, limit=limit, conn=conn
        )

    async def get_by_task(self, task_id: str, *, conn: Any = None) -> SessionRecord | None:
        return await self._db.run(self._sync.get_by_task, task_id, conn=conn)

    async def update(self, name: str, *, conn: Any = None, **changes: str | None) -> SessionRecord:
        return await self._db.run(self._sync.update, name, conn=conn, **changes)

    async def delete(self, name: str, *, conn: Any = None) -> bool:
        return await self._db.run(self._sync.delete, name, conn=conn)
