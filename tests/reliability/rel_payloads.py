"""The hostile-input corpus and the catalog snapshot the hostile-input tests compare."""

from __future__ import annotations

from typing import Any

from shareddb import DbService

# ~12 kB of CJK text that does not compress: too big for a btree entry on PostgreSQL.
LONG_RANDOM = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(4000))

PAYLOADS: list[str] = [
    # quotes and escapes
    "'",
    '"',
    "`",
    "''",
    "\\",
    "\\'",
    "\\x00",
    "E'\\x27'",
    # classic injections
    "' OR '1'='1",
    "' OR 1=1 --",
    "1' OR '1'='1' /*",
    "'; DROP TABLE sessions; --",
    '"; DROP TABLE task_embeddings; --',
    "x'); DELETE FROM schema_migrations; --",
    "'); CREATE ROLE evil SUPERUSER; --",
    "' UNION SELECT session, repo_name FROM sessions --",
    "'; ATTACH DATABASE 'evil.db' AS evil; --",
    "'; COPY sessions TO PROGRAM 'id'; --",
    "'||pg_sleep(5)||'",
    "1; SELECT pg_sleep(5)",
    "$$; DROP TABLE sessions; $$",
    "$tag$ x $tag$",
    "md#1; DROP TABLE task_embeddings",
    # placeholders and comments
    "%s",
    "%(name)s",
    "%%",
    "?",
    "$1",
    ":name",
    "/* unterminated",
    "*/",
    "-- comment",
    "#",
    ";",
    # NUL, surrogates, control characters
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\udcff",
    "\x7f\x1b[31mred",
    "line\nbreak",
    "cr\r\nlf",
    "\t",
    " ",
    "",
    # sizes
    "x" * 100_000,
    LONG_RANDOM,
    # Unicode confusables and oddities
    "ｓｅｌｅｃｔ * ｆｒｏｍ sessions",  # noqa: RUF001
    "ѕеѕѕіоnѕ",  # noqa: RUF001
    "ＤＲＯＰ ＴＡＢＬＥ sessions",  # noqa: RUF001
    "\u202egnp.exe",
    "zero\u200bwidth",
    "\ufeffbom",
    "e\u0301",
    "ﬁ",
    "\U0001f600",
    "\U0010ffff",
    # look like values or names
    "NULL",
    "None",
    "-1",
    "1e309",
    "../../etc/passwd",
    "~no_such_user_0/x.db",
    "C:\\Windows\\system32",
    "select",
    "sessions",
    "task_embeddings",
    "schema_migrations",
    "sqlite_master",
    "pg_class",
    "pg_catalog.pg_class",
    "shareddb_vector_versions",
    "plain_name\n",
    "app\n",
]

assert len(PAYLOADS) == len(set(PAYLOADS)) >= 40


def label(payload: str) -> str:
    """A short printable name for a payload, for messages."""
    text = ascii(payload)
    return text if len(text) <= 40 else f"{text[:30]}... ({len(payload):,} chars)"


def catalog(db: DbService) -> dict[str, Any]:
    """Tables, columns, indexes, triggers, functions, extensions and roles of the database."""
    with db.connection() as conn:
        if db.get_backend_type() == "sqlite":
            objects = sorted(
                conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
            )
            columns = sorted(
                (table, *column)
                for (table,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                ).fetchall()
                for column in conn.execute(
                    "SELECT * FROM pragma_table_info(?)", (table,)
                ).fetchall()
            )
            return {"objects": objects, "columns": columns}
        user_schemas = (
            "n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'"
        )
        return {
            "relations": conn.execute(
                "SELECT n.nspname, c.relname, c.relkind FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE "
                + user_schemas
                + " ORDER BY 1, 2"
            ).fetchall(),
            "columns": conn.execute(
                "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull "
                "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE a.attnum > 0 AND "
                + user_schemas
                + " ORDER BY 1, 2"
            ).fetchall(),
            "indexes": conn.execute(
                "SELECT schemaname, indexname, indexdef FROM pg_indexes "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
            ).fetchall(),
            "constraints": conn.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE connamespace = 'public'::regnamespace ORDER BY 1"
            ).fetchall(),
            "triggers": conn.execute(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1"
            ).fetchall(),
            "functions": conn.execute(
                "SELECT n.nspname, p.proname FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE "
                + user_schemas
                + " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid "
                "AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e') ORDER BY 1, 2"
            ).fetchall(),
            "schemas": conn.execute("SELECT nspname FROM pg_namespace ORDER BY 1").fetchall(),
            "extensions": conn.execute(
                "SELECT extname, extversion FROM pg_extension ORDER BY 1"
            ).fetchall(),
            "roles": conn.execute(
                "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolcanlogin "
                "FROM pg_roles ORDER BY 1"
            ).fetchall(),
            "databases": conn.execute(
                "SELECT datname FROM pg_database WHERE datname = current_database()"
            ).fetchall(),
        }
