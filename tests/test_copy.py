"""``shareddb copy``: SQLite -> PostgreSQL -> SQLite keeps every row bit for bit, idempotently.

Also: embedding records (metadata, content_hash, model) field by field, destination rows
that are newer kept (or replaced with --overwrite), --dry-run writing and creating
nothing, and --url refused.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from helpers import run_cli
from pgvector.psycopg import register_vector

from shareddb import DbService
from shareddb.sessions import SessionRecord, SessionStorage
from shareddb.vectors import VectorStorage

TIMEOUT = 180
SPECIAL = np.array(
    [0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, 3.4028235e38, -3.4028235e38, 0.1, -1 / 3],
    dtype=np.float32,
)
# Metadata as applications (or hand-written SQL) leave it in SQLite: not canonical text
# (spaces, key order), nested, unicode and escapes, ints past 2**53, extreme floats.
METADATA = (
    "{}",
    '{ "b": 1, "a": [1, 2.5, "\\u00e9", null, true, false] }',
    '{"nested": {"deep": {"list": [{"x": 0.1}, [], {}]}}, "big": 9007199254740993, '
    '"min": -9223372036854775808}',
    '{"text": "\\u65e5\\u672c \\ud83d\\ude00 \\"quoted\\" \\n tab\\t é", "one": 1.0, '
    '"tiny": 1e-300, "huge": 1.7976931348623157e308}',
    '{"status":"open","priority":2,"tags":["a","b"]}',
)
CONTENT_HASHES = (None, "sha256:" + "ab" * 32, "hash mit Ümlaut", None, "0")
MODELS = ("sentence-transformers/all-MiniLM-L6-v2", None, "модель", "m", None)


def run_copy(source: str, dest: str, *extra: str) -> dict[str, Any]:
    """``shareddb copy --json``: the tables' counts by table name."""
    data = run_copy_report(source, dest, *extra)
    return {t["table"]: t for t in data["tables"]}


def run_copy_report(source: str, dest: str, *extra: str) -> dict[str, Any]:
    """``shareddb copy --json``: the whole report."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shareddb",
            "copy",
            "--from",
            source,
            "--to",
            dest,
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=dict(os.environ),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def fill_source(url: str, sessions: int = 23, embeddings: int = 31) -> None:
    """Sessions through SessionStorage; embeddings as raw float32 rows of several sizes."""
    rng = np.random.default_rng(20250131)
    tie = datetime(2025, 1, 31, 9, 30, 0, 123456, tzinfo=UTC)
    with DbService(url) as db:
        db.initialize()
        store = SessionStorage(db)
        for i in range(sessions):
            store.add(
                SessionRecord(
                    session=f"session-{i:03d}" if i % 5 else f"sé'ssion; DROP TABLE x;-- {i}",
                    repo_name=f"repo-{i % 4}",
                    repo_url=f"https://example.com/r/{i % 4}.git",
                    branch=None if i % 3 else f"feature/{i}",
                    task_id=None if i % 2 else f"md#{i}",
                    # Several sessions share one microsecond: their order must survive.
                    created_at=tie if i < 6 else tie + timedelta(seconds=i, microseconds=i),
                    updated_at=tie + timedelta(days=1, microseconds=7 * i),
                )
            )
        stamp = tie.isoformat(timespec="microseconds")
        with db.connection() as conn:
            for i in range(embeddings):
                dim = (1, 3, 9, 384)[i % 4]
                vector = rng.standard_normal(dim).astype(np.float32) * np.float32(
                    10.0 ** (i % 7 - 3)
                )
                if i == 0:
                    vector = SPECIAL
                    dim = len(SPECIAL)
                conn.execute(
                    "INSERT INTO task_embeddings (qualified_task_id, backend, dimension, "
                    "embedding, metadata, content_hash, model, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        f"{('md', 'gh')[i % 2]}#{i}",
                        ("md", "gh", "custom")[i % 3],
                        dim,
                        vector.astype("<f4").tobytes(),
                        METADATA[i % len(METADATA)],
                        CONTENT_HASHES[i % len(CONTENT_HASHES)],
                        MODELS[i % len(MODELS)],
                        stamp,
                        stamp,
                    ),
                )


def sqlite_rows(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every copied column, exactly as SQLite stores it (text timestamps, float32 blobs)."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        sessions = conn.execute(
            "SELECT session, repo_name, repo_url, branch, task_id, created_at, updated_at "
            "FROM sessions ORDER BY session"
        ).fetchall()
        embeddings = conn.execute(
            "SELECT qualified_task_id, backend, dimension, embedding, metadata, content_hash, "
            "model, created_at, updated_at FROM task_embeddings ORDER BY qualified_task_id"
        ).fetchall()
    return sessions, embeddings


def canonical(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Embedding rows of `sqlite_rows` with the metadata text parsed (see `json_value`)."""
    return [(*row[:4], json_value(row[4]), *row[5:]) for row in rows]


def json_value(data: str | dict[str, Any]) -> Any:
    """A JSON value to compare: numbers as exact Decimals (1e18 == 1000000000000000000, as
    jsonb keeps it), every other value as it is (True is not 1, key order is ignored)."""
    text = data if isinstance(data, str) else json.dumps(data)

    def tag(value: Any) -> Any:
        if isinstance(value, Decimal):
            return ("number", value.normalize())
        if isinstance(value, dict):
            return {k: tag(v) for k, v in value.items()}
        if isinstance(value, list):
            return [tag(v) for v in value]
        return value

    return tag(json.loads(text, parse_float=Decimal, parse_int=Decimal))


def pg_embeddings(url: str) -> dict[str, tuple[Any, ...]]:
    """task_embeddings on PostgreSQL, vectors read in binary and turned into float32 LE bytes:
    (backend, dimension, blob, metadata as jsonb's dict, content_hash, model, created, updated).
    """
    with psycopg.connect(url) as conn:
        register_vector(conn)
        cur = conn.cursor(binary=True)
        cur.execute(
            "SELECT qualified_task_id, backend, dimension, embedding, metadata, content_hash, "
            "model, created_at, updated_at FROM task_embeddings"
        )
        return {
            qid: (backend, dim, vec.to_numpy().astype("<f4").tobytes(), *rest)
            for qid, backend, dim, vec, *rest in cur
        }


def listed(url: str) -> list[SessionRecord]:
    with DbService(url) as db:
        return SessionStorage(db).list()


@pytest.mark.postgres
def test_copy_sqlite_to_postgres_and_back_is_bit_exact_and_idempotent(
    tmp_path: Path, pg_url: str
) -> None:
    source = f"sqlite:///{tmp_path}/source.db"
    back = f"sqlite:///{tmp_path}/back.db"
    fill_source(source)
    src_sessions, src_embeddings = sqlite_rows(source)

    first = run_copy(source, pg_url, "--batch-size", "7")  # several batches and a remainder
    assert first["sessions"]["inserted"] == len(src_sessions)
    assert first["task_embeddings"]["inserted"] == len(src_embeddings)
    on_pg = pg_embeddings(pg_url)
    assert len(on_pg) == len(src_embeddings)
    for qid, backend, dim, blob, metadata, content_hash, model, created, updated in src_embeddings:
        pg_backend, pg_dim, pg_blob, pg_metadata, pg_hash, pg_model, pg_created, pg_updated = on_pg[
            qid
        ]
        assert (pg_backend, pg_dim) == (backend, dim)
        assert pg_blob == blob, qid  # every bit, -0.0 and subnormals included
        assert isinstance(pg_metadata, dict)  # jsonb, not a string inside jsonb
        assert json_value(pg_metadata) == json_value(metadata), qid
        assert pg_hash == content_hash and pg_model == model, qid  # text or NULL, as it was
        assert pg_created == datetime.fromisoformat(created)
        assert pg_updated == datetime.fromisoformat(updated)
    assert {v[4] for v in on_pg.values()} == set(CONTENT_HASHES)  # NULL included
    assert {v[5] for v in on_pg.values()} == set(MODELS)
    assert listed(pg_url) == listed(source)  # same records in the same order (ties too)
    with DbService(pg_url) as db:  # the copied rows work through the domain API
        vectors = VectorStorage(db)
        for qid, backend, _, blob, metadata, content_hash, model, _, _ in src_embeddings:
            record = vectors.get_record(qid)
            assert record is not None
            assert record.embedding.astype("<f4").tobytes() == blob
            assert (record.backend, record.content_hash, record.model) == (
                backend,
                content_hash,
                model,
            )
            assert json_value(json.dumps(record.metadata)) == json_value(metadata)
        assert vectors.count(where={"status": "open"}) == sum(
            1 for row in src_embeddings if '"status":"open"' in row[4]
        )
        query = np.frombuffer(src_embeddings[1][3], dtype="<f4")
        nearest = vectors.search(query, k=1, metric="l2", exact=True)
        assert nearest[0].qualified_task_id == src_embeddings[1][0]
        assert nearest[0].distance == 0.0

    again = run_copy(source, pg_url, "--batch-size", "7")
    for table in ("sessions", "task_embeddings"):
        assert again[table]["written"] == 0
        assert again[table]["inserted"] == again[table]["updated"] == 0
        assert again[table]["unchanged"] == again[table]["read"]
    assert pg_embeddings(pg_url) == on_pg

    home = run_copy(pg_url, back, "--batch-size", "5")
    assert home["task_embeddings"]["inserted"] == len(src_embeddings)
    back_sessions, back_embeddings = sqlite_rows(back)
    assert back_sessions == src_sessions
    # Every field as it was; metadata the same JSON value, now as canonical text.
    assert canonical(back_embeddings) == canonical(src_embeddings)
    for row in back_embeddings:
        text = json.dumps(
            json.loads(row[4]), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        assert row[4] == text
    assert listed(back) == listed(source)
    repeat = run_copy(pg_url, back)
    assert repeat["sessions"]["unchanged"] == len(src_sessions)
    assert repeat["task_embeddings"]["unchanged"] == len(src_embeddings)
    assert sqlite_rows(back) == (back_sessions, back_embeddings)
    # And to the source again: nothing to do, whatever the metadata's spelling there.
    to_source = run_copy(back, source)
    assert to_source["task_embeddings"]["unchanged"] == len(src_embeddings)
    assert sqlite_rows(source) == (src_sessions, src_embeddings)


def test_copy_updates_what_changed_and_keeps_rows_only_the_target_has(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path}/a.db"
    dest = f"sqlite:///{tmp_path}/b.db"
    fill_source(source, sessions=5, embeddings=6)
    run_copy(source, dest)
    with DbService(source) as db:
        SessionStorage(db).update("session-001", branch="moved")
        with db.connection() as conn:
            conn.execute(
                "UPDATE task_embeddings SET embedding = ? WHERE qualified_task_id = 'gh#1'",
                (np.array([9.5, -0.0, 1e-45], dtype="<f4").tobytes(),),
            )
    with DbService(dest) as db:
        SessionStorage(db).add(SessionRecord(session="only-here", repo_name="r", repo_url="u"))

    result = run_copy(source, dest)
    assert (result["sessions"]["inserted"], result["sessions"]["updated"]) == (0, 1)
    assert (result["task_embeddings"]["inserted"], result["task_embeddings"]["updated"]) == (0, 1)
    dest_sessions, dest_embeddings = sqlite_rows(dest)
    src_sessions, src_embeddings = sqlite_rows(source)
    assert [r for r in dest_sessions if r[0] != "only-here"] == src_sessions
    assert canonical(dest_embeddings) == canonical(src_embeddings)
    assert any(r[0] == "only-here" for r in dest_sessions)


def test_copy_only_one_table(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path}/a.db"
    dest = f"sqlite:///{tmp_path}/b.db"
    fill_source(source, sessions=3, embeddings=4)
    result = run_copy(source, dest, "--only", "task_embeddings")
    assert set(result) == {"task_embeddings"}
    sessions, embeddings = sqlite_rows(dest)
    assert sessions == []
    assert len(embeddings) == 4


def test_copy_refuses_one_database_twice_and_a_missing_source(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/a.db"
    fill_source(url, sessions=1, embeddings=1)
    same = subprocess.run(
        [
            sys.executable,
            "-m",
            "shareddb",
            "copy",
            "--from",
            url,
            "--to",
            f"sqlite:///{tmp_path}/./a.db",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert same.returncode == 1
    assert "two different databases" in same.stderr
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "shareddb",
            "copy",
            "--from",
            f"sqlite:///{tmp_path}/nope.db",
            "--to",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    assert not (tmp_path / "nope.db").exists()


# -- records, newer rows, dry runs, --url: each direction ----------------------------------


@pytest.fixture(
    params=[
        pytest.param(("sqlite", "sqlite"), id="sqlite-to-sqlite"),
        pytest.param(("sqlite", "postgres"), id="sqlite-to-postgres", marks=pytest.mark.postgres),
        pytest.param(("postgres", "sqlite"), id="postgres-to-sqlite", marks=pytest.mark.postgres),
    ]
)
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(source url, destination url), neither created yet."""
    kinds: tuple[str, str] = request.param
    sqlite = iter([f"sqlite:///{tmp_path}/one.db", f"sqlite:///{tmp_path}/two.db"])
    return tuple(  # type: ignore[return-value]
        request.getfixturevalue("pg_url") if kind == "postgres" else next(sqlite) for kind in kinds
    )


def fill_records(url: str) -> None:
    """Four sessions and four embedding records through the domain API (either engine)."""
    with DbService(url) as db:
        db.initialize()
        sessions, vectors = SessionStorage(db), VectorStorage(db)
        for i in range(4):
            sessions.add(SessionRecord(session=f"s{i}", repo_name="r", repo_url="u"))
            vectors.upsert(
                f"md#{i}",
                [float(i), 1.0, -0.0],
                metadata={"i": i, "tags": ["x", "é"], "score": 0.5},
                content_hash=f"h{i}" if i % 2 else None,
                model="minilm" if i < 2 else None,
            )


def edit(url: str, session: str, task_id: str, side: str) -> None:
    """Change one session and one embedding record at `url` (moving their updated_at)."""
    with DbService(url) as db:
        SessionStorage(db).update(session, branch=f"from-{side}")
        VectorStorage(db).upsert(
            task_id, [9.0, 9.0, 9.0], metadata={"side": side}, content_hash=side, model=side
        )


def state(url: str) -> tuple[list[SessionRecord], list[tuple[Any, ...]]]:
    """Every session and every embedding record (all fields), through the API, in key order."""
    with DbService(url) as db:
        vectors = VectorStorage(db)
        records = [vectors.get_record(qid) for qid in vectors.ids()]
        return SessionStorage(db).list(), [
            (
                r.qualified_task_id,
                r.backend,
                r.embedding.astype("<f4").tobytes(),
                json.dumps(r.metadata, sort_keys=True),
                r.content_hash,
                r.model,
                r.created_at,
                r.updated_at,
            )
            for r in records
            if r is not None
        ]


def snapshot(url: str) -> Any:
    """Everything a database holds: every table's definition and rows (None: no database)."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            return None
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            schema = conn.execute(
                "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
            ).fetchall()
            tables = [name for kind, name, _ in schema if kind == "table"]
            rows = {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in tables}
        return schema, rows, path.read_bytes()
    with psycopg.connect(url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        columns = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2"
        ).fetchall()
        indexes = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
        rows = {
            t: sorted(r[0] for r in conn.execute(f'SELECT x::text FROM "{t}" AS x'))  # type: ignore[arg-type]
            for t in tables
        }
        return columns, indexes, rows


def counts(report: dict[str, Any]) -> dict[str, tuple[int, int, int, int]]:
    return {
        t["table"]: (t["inserted"], t["updated"], t["kept"], t["unchanged"])
        for t in report["tables"]
    }


def test_copy_keeps_destination_rows_that_are_newer_unless_overwrite(
    pair: tuple[str, str],
) -> None:
    source, dest = pair
    fill_records(source)
    run_copy(source, dest)
    # s1 / md#1: changed on both sides, the destination last (newer there): kept.
    edit(source, "s1", "md#1", "source")
    edit(dest, "s1", "md#1", "dest")
    # s2 / md#2: changed on both sides, the source last: the source wins, as before.
    edit(dest, "s2", "md#2", "dest")
    edit(source, "s2", "md#2", "source")
    dest_before = state(dest)

    text = run_cli("copy", "--from", source, "--to", dest)
    assert text.returncode == 0, text.stderr
    for table in ("sessions", "task_embeddings"):
        assert (
            f"{table}: 4 read, 1 written (0 new, 1 updated), 2 unchanged, "
            "1 kept, newer in destination in "
        ) in text.stdout
    assert "2 rows kept: the destination's updated_at is newer" in text.stdout
    assert "--overwrite" in text.stdout

    sessions, records = state(dest)
    src_sessions, src_records = state(source)
    by_name = {s.session: s for s in sessions}
    src_by_name = {s.session: s for s in src_sessions}
    dest_before_by_name = {s.session: s for s in dest_before[0]}
    assert by_name["s1"] == dest_before_by_name["s1"]  # kept: the destination's, untouched
    assert by_name["s1"].branch == "from-dest"
    assert by_name["s2"] == src_by_name["s2"]  # updated: the source's, its timestamps too
    by_id = {r[0]: r for r in records}
    assert by_id["md#1"] == {r[0]: r for r in dest_before[1]}["md#1"]
    assert by_id["md#1"][3:6] == ('{"side": "dest"}', "dest", "dest")
    assert by_id["md#2"] == {r[0]: r for r in src_records}["md#2"]

    again = run_copy_report(source, dest)
    assert counts(again) == {"sessions": (0, 0, 1, 3), "task_embeddings": (0, 0, 1, 3)}
    assert again["overwrite"] is False and again["dry_run"] is False

    overwrite = run_copy_report(source, dest, "--overwrite")
    assert overwrite["overwrite"] is True
    assert counts(overwrite) == {"sessions": (0, 1, 0, 3), "task_embeddings": (0, 1, 0, 3)}
    assert state(dest) == state(source)  # the source wins everywhere, timestamps included
    assert counts(run_copy_report(source, dest)) == {
        "sessions": (0, 0, 0, 4),
        "task_embeddings": (0, 0, 0, 4),
    }


def test_dry_run_reports_what_a_copy_would_do_and_changes_nothing(
    pair: tuple[str, str],
) -> None:
    source, dest = pair
    fill_records(source)
    run_copy(source, dest)
    edit(source, "s0", "md#0", "source")  # updated
    edit(source, "s1", "md#1", "source")
    edit(dest, "s1", "md#1", "dest")  # kept (newer in the destination)
    with DbService(source) as db:  # new
        SessionStorage(db).add(SessionRecord(session="s9", repo_name="r", repo_url="u"))
        VectorStorage(db).upsert("md#9", [1.0, 2.0, 3.0], metadata={"new": True})
    before = snapshot(dest)

    dry = run_copy_report(source, dest, "--dry-run")
    assert dry["dry_run"] is True
    assert dry["destination"] == {"exists": True, "initialized": True, "migrations": []}
    expected = {"sessions": (1, 1, 1, 2), "task_embeddings": (1, 1, 1, 2)}
    assert counts(dry) == expected
    assert snapshot(dest) == before  # every table, row and (SQLite) byte as it was
    text = run_cli("copy", "--from", source, "--to", dest, "--dry-run")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("dry run: nothing was written to ")
    assert (
        "task_embeddings: 5 read, would write 2 (1 new, 1 updated), 2 unchanged, "
        "1 kept, newer in destination\n"
    ) in text.stdout
    assert snapshot(dest) == before

    real = run_copy_report(source, dest)  # does what the dry run said
    assert counts(real) == expected
    assert snapshot(dest) != before


def test_dry_run_to_a_database_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path}/a.db"
    dest = f"sqlite:///{tmp_path}/new/b.db"
    fill_source(source, sessions=3, embeddings=4)
    before = sorted(p.name for p in tmp_path.iterdir())

    dry = run_copy_report(source, dest, "--dry-run")
    assert dry["destination"]["exists"] is False
    assert dry["destination"]["initialized"] is False
    assert dry["destination"]["migrations"][0] == "shareddb/0001_task_embeddings.sql"
    assert counts(dry) == {"sessions": (3, 0, 0, 0), "task_embeddings": (4, 0, 0, 0)}
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no file, no folder
    text = run_cli("copy", "--from", source, "--to", dest, "--dry-run")
    assert text.returncode == 0, text.stderr
    assert "destination: does not exist yet; a copy would create it and apply 3" in text.stdout
    assert not (tmp_path / "new").exists()


@pytest.mark.postgres
def test_dry_run_to_an_uninitialized_postgres_database_creates_no_table(
    tmp_path: Path, pg_url: str
) -> None:
    source = f"sqlite:///{tmp_path}/a.db"
    fill_source(source, sessions=3, embeddings=4)
    before = snapshot(pg_url)
    assert before[0] == []  # no columns: no tables

    dry = run_copy_report(source, pg_url, "--dry-run")
    assert dry["destination"]["exists"] is True
    assert dry["destination"]["initialized"] is False
    assert len(dry["destination"]["migrations"]) == 3
    assert counts(dry) == {"sessions": (3, 0, 0, 0), "task_embeddings": (4, 0, 0, 0)}
    assert snapshot(pg_url) == before
    text = run_cli("copy", "--from", source, "--to", pg_url, "--dry-run")
    assert "destination: 3 pending migrations, which a copy would apply first" in text.stdout
    assert snapshot(pg_url) == before


def drop_records_migration(url: str) -> None:
    """Put a database back to before migration 0003 (no metadata / content_hash / model)."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        with closing(conn), conn:  # closed: the last connection checkpoints the WAL
            for column in ("metadata", "content_hash", "model"):
                conn.execute(f"ALTER TABLE task_embeddings DROP COLUMN {column}")
            conn.execute("DELETE FROM schema_migrations WHERE version = 3")
        return
    with psycopg.connect(url) as conn:
        conn.execute(
            "ALTER TABLE task_embeddings DROP COLUMN metadata, DROP COLUMN content_hash, "
            "DROP COLUMN model"
        )
        conn.execute("DELETE FROM schema_migrations WHERE version = 3")


def test_copy_reads_a_source_and_compares_a_destination_from_before_the_records_migration(
    pair: tuple[str, str],
) -> None:
    source, dest = pair
    with DbService(source) as db:
        db.initialize()
        VectorStorage(db).upsert_many((["md#1", "md#2"], np.eye(2, 3, dtype=np.float32)))
    run_copy(source, dest)
    drop_records_migration(source)  # the source is only read: it stays as it is
    drop_records_migration(dest)
    before = snapshot(dest)

    dry = run_copy_report(source, dest, "--dry-run")
    assert dry["destination"]["migrations"] == ["shareddb/0003_embedding_records.sql"]
    # Both sides read as migration 0003 leaves old rows ({}, NULL, NULL): nothing differs.
    assert counts(dry)["task_embeddings"] == (0, 0, 0, 2)
    assert snapshot(dest) == before

    real = run_copy_report(source, dest)
    assert real["destination"]["migrations"] == ["shareddb/0003_embedding_records.sql"]
    assert counts(real)["task_embeddings"] == (0, 0, 0, 2)
    with DbService(dest) as db:
        record = VectorStorage(db).get_record("md#1")
    assert record is not None
    assert (record.metadata, record.content_hash, record.model) == ({}, None, None)


@pytest.mark.parametrize("option", ["--url", "--config"])
def test_copy_refuses_url_and_config_with_a_usage_error(tmp_path: Path, option: str) -> None:
    source = f"sqlite:///{tmp_path}/a.db"
    fill_source(source, sessions=1, embeddings=1)
    value = f"sqlite:///{tmp_path}/c.db" if option == "--url" else str(tmp_path / "x.toml")
    for argv in (
        ["copy", option, value, "--from", source, "--to", f"sqlite:///{tmp_path}/b.db"],
        ["copy", option, value],
    ):
        result = run_cli(*argv)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "usage:" in result.stderr
        assert f"argument {option}:" in result.stderr
        assert "--from URL" in result.stderr and "--to URL" in result.stderr
        assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.db"]
    # Other commands still take them.
    assert run_cli("status", "--url", source).returncode == 0


@pytest.mark.postgres
def test_metadata_that_jsonb_respells_is_not_updated_on_every_copy(
    tmp_path: Path, pg_url: str
) -> None:
    """jsonb keeps a number's value, not its spelling: -0.0 reads back as 0.0, 1e18 as an int."""
    source = f"sqlite:///{tmp_path}/a.db"
    with DbService(source) as db:
        db.initialize()
        with db.connection() as conn:
            conn.execute(
                "INSERT INTO task_embeddings (qualified_task_id, backend, dimension, embedding, "
                "metadata, created_at, updated_at) VALUES ('md#1', 'md', 1, ?, ?, ?, ?)",
                (
                    np.ones(1, dtype="<f4").tobytes(),
                    '{"zero": -0.0, "big": 1e18, "one": 1.0, "flag": true}',
                    "2025-01-31T09:30:00.000000+00:00",
                    "2025-01-31T09:30:00.000000+00:00",
                ),
            )
    assert run_copy(source, pg_url)["task_embeddings"]["inserted"] == 1
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT metadata::text FROM task_embeddings").fetchone()
    assert row is not None
    assert json_value(row[0]) == json_value('{"zero": 0, "big": 1e18, "one": 1, "flag": true}')
    for _ in range(2):
        again = run_copy(source, pg_url)["task_embeddings"]
        assert (again["updated"], again["unchanged"]) == (0, 1)
        back = run_copy(pg_url, source)["task_embeddings"]
        assert (back["updated"], back["kept"], back["unchanged"]) == (0, 0, 1)
