"""``shareddb doctor``'s pooler line: what the url reaches, the configured pooler, direct_url.

A pooler in front is told for sure by the backend pid (see `pooler.behind_pooler`);
its mode by a second client (`pooler.pooling_mode`), which is sure only when it says
"transaction". The configured ``pooler`` is compared with what was found.
"""

from __future__ import annotations

from typing import Literal

import psycopg

from shareddb._core.service import DbService
from shareddb._engines.postgres.connect import connect
from shareddb._engines.postgres.engine import PostgresEngine
from shareddb._engines.postgres.pooler import behind_pooler, pooling_mode
from shareddb.errors import DatabaseUnavailableError

Finding = tuple[Literal["ok", "warn", "fail"], str, str | None]

SET_TRANSACTION = 'set pooler = "transaction" in [db] (or DbService(..., pooler="transaction"))'


def pooler_findings(db: DbService, timeout: float) -> list[Finding]:
    """The verdicts on the pooler in front of `db`'s url and on its direct_url."""
    target = db.engine.target
    configured = f"pooler = {db.pooler!r}" if db.pooler else "no pooler configured"
    with db.engine.statement() as conn:
        behind = behind_pooler(conn)
        mode = pooling_mode(conn, target, timeout) if behind else None
    findings: list[Finding] = []
    if mode is None:
        if db.pooler == "transaction":
            findings.append(
                (
                    "warn",
                    f"{configured}, but the url reaches the server directly: statements are "
                    "never prepared, for nothing",
                    "remove pooler unless a transaction pooler will stand in front",
                )
            )
        else:
            findings.append(("ok", f"the url reaches the server directly ({configured})", None))
    elif mode == "statement":
        findings.append(
            (
                "fail",
                "the url reaches a pooler in statement mode, which refuses transactions",
                "use the pooler's transaction mode and " + SET_TRANSACTION,
            )
        )
    elif mode == "transaction":
        if db.pooler == "transaction":
            findings.append(("ok", f"a pooler in transaction mode ({configured})", None))
        else:
            findings.append(
                (
                    "fail",
                    f"the url reaches a pooler in transaction mode but {configured}: prepared "
                    "statements would cross clients and run the wrong SQL",
                    SET_TRANSACTION,
                )
            )
    elif db.pooler is None:
        findings.append(
            (
                "warn",
                "the url reaches a pooler or proxy (the backend pid differs from the one "
                "the connection was given) whose mode can't be told from here (session, or "
                "a busy transaction pooler)",
                SET_TRANSACTION + ' if it pools transactions, else pooler = "session"',
            )
        )
    else:
        findings.append(("ok", f"a pooler or proxy in front ({configured})", None))
    if db.direct_url is not None:
        findings.append(_direct_finding(db, timeout))
    elif db.pooler == "transaction" or mode == "transaction":
        findings.append(
            (
                "warn",
                "no direct_url: initialize() can't apply migrations through a transaction "
                "pooler (an up-to-date database is fine)",
                "set direct_url in [db] to the PostgreSQL server behind the pooler",
            )
        )
    return findings


def _direct_finding(db: DbService, timeout: float) -> Finding:
    engine = db.engine
    assert isinstance(engine, PostgresEngine) and engine.direct is not None
    direct = engine.direct
    try:
        with connect(direct, timeout, autocommit=True) as conn:
            behind = behind_pooler(conn)
    except (DatabaseUnavailableError, psycopg.Error) as e:
        return ("fail", f"direct_url: {e}", "fix direct_url in [db]")
    if behind:
        return (
            "fail",
            f"direct_url {direct.masked} reaches a pooler or proxy, not the server",
            "point direct_url at the PostgreSQL server itself",
        )
    return ("ok", f"direct_url {direct.masked} reaches the server; migrations run there", None)
