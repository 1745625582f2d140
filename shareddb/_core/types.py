"""Types shared by the service, the engines and the domains."""

from __future__ import annotations

import sqlite3
from typing import Any, Literal, TypeAlias

import psycopg

EngineKind: TypeAlias = Literal["sqlite", "postgres"]

# What sits between shareddb and PostgreSQL, as configured (``pooler=``): None for a
# direct connection, or the pool mode of a pooler such as PgBouncer.
Pooler: TypeAlias = Literal["session", "transaction"]

PgConnection: TypeAlias = psycopg.Connection[tuple[Any, ...]]
PgCursor: TypeAlias = psycopg.Cursor[tuple[Any, ...]]

# What DbService.connection() and transaction() yield, and what every domain method
# accepts as ``conn=``: a psycopg connection on PostgreSQL, sqlite3's on SQLite.
Connection: TypeAlias = PgConnection | sqlite3.Connection
