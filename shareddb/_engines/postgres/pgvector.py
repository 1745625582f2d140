"""pgvector on the server: its versions, creating it, and the advice when it can't be."""

from __future__ import annotations

import logging

import psycopg

from shareddb._core.types import PgConnection
from shareddb._core.url import DbTarget
from shareddb.errors import ExtensionMissingError

logger = logging.getLogger("shareddb")

MIN_PGVECTOR = (0, 5, 0)
ITERATIVE_SCAN_PGVECTOR = (0, 8, 0)
# pgvector's (default_version, installed_version) on the server; no row when not installed.
PGVECTOR_VERSIONS = (
    "SELECT default_version, installed_version FROM pg_available_extensions WHERE name = 'vector'"
)
INSTALLED_VERSION = "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
UPGRADE = "upgrade the server package, then run: ALTER EXTENSION vector UPDATE;"


def install_advice(server_major: int) -> str:
    """How to get pgvector onto a PostgreSQL `server_major` server, or do without one."""
    return (
        f"install it on the server (Debian/Ubuntu: apt install postgresql-{server_major}-pgvector; "
        "Homebrew: brew install pgvector; or build it from source), or use the embedded "
        "PostgreSQL, which bundles it: pip install 'shareddb[embedded]' and set "
        "[sessiondb.postgres] embedded = true"
    )


def create_advice(dbname: str) -> str:
    return f"ask a superuser to run CREATE EXTENSION vector; in database {dbname!r}"


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def ensure_pgvector(conn: PgConnection, target: DbTarget) -> str:
    """Create pgvector if needed and return its version; ExtensionMissingError with the fix."""
    where = f"database {conn.info.dbname!r} on {target.masked}"
    major = conn.info.server_version // 10000
    row = conn.execute(PGVECTOR_VERSIONS).fetchone()
    if row is None:
        raise ExtensionMissingError(
            f"pgvector is not installed on the PostgreSQL {major} server of {where}",
            fix=install_advice(major),
        )
    if row[1] is None:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.errors.InsufficientPrivilege:
            raise ExtensionMissingError(
                f"role {conn.info.user!r} may not create the pgvector extension in {where} "
                "(vector is not a trusted extension: only a superuser, or a managed "
                "service's admin role such as rds_superuser, can create it)",
                fix=f"{create_advice(conn.info.dbname)}, then run initialize() again",
            ) from None
        logger.info("created extension vector in %s", where)
    version_row = conn.execute(INSTALLED_VERSION).fetchone()
    assert version_row is not None
    version = str(version_row[0])
    if version_tuple(version) < MIN_PGVECTOR:
        raise ExtensionMissingError(
            f"pgvector {version} in {where} is older than 0.5.0, which shareddb needs for HNSW",
            fix=UPGRADE,
        )
    if version_tuple(version) < ITERATIVE_SCAN_PGVECTOR:
        logger.warning(
            "pgvector %s in %s has no iterative index scans (0.8.0+): filtered searches "
            "may return fewer than k rows; %s",
            version,
            where,
            UPGRADE,
        )
    return version
