"""``shareddb index list|create|drop`` on real databases, through `shareddb.cli.main`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from shareddb import DbService
from shareddb.cli import main
from shareddb.vectors import VectorStorage

HNSW_3 = "task_embeddings_hnsw_cosine_3_idx"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``shareddb index ARGS``: its exit status, stdout and stderr."""
    capsys.readouterr()  # drop what the fixtures printed
    code = main(["index", *args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def vector_indexes(url: str, table: str = "task_embeddings") -> dict[str, str]:
    """``{indexname: indexdef}`` of `table` from pg_indexes, read without shareddb."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = 'public' AND tablename = %s",
            (table,),
        ).fetchall()
    return {
        name: definition
        for name, definition in rows
        if " USING hnsw " in definition or " USING ivfflat " in definition
    }


def load(db: DbService, table: str = "task_embeddings", rows: int = 50) -> None:
    vectors = VectorStorage(db, table=table)
    if table != "task_embeddings":
        vectors.create_table()
    matrix = np.random.default_rng(7).standard_normal((rows, 3)).astype(np.float32)
    vectors.upsert_many(([f"md#{i}" for i in range(rows)], matrix))


@pytest.fixture
def pg(pg_url: str) -> Iterator[str]:
    """An initialized PostgreSQL database holding 50 embeddings of dimension 3."""
    with DbService(pg_url) as db:
        db.initialize()
        load(db)
    yield pg_url


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.mark.postgres
def test_create_then_list_shows_the_index_in_text_and_json(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "list", "--url", pg)
    assert code == 0, err
    assert "none" in out and HNSW_3 not in out

    code, out, err = run(capsys, "create", "--dimension", "3", "--url", pg)
    assert code == 0, err
    assert f"built index {HNSW_3} in " in out
    assert list(vector_indexes(pg)) == [HNSW_3]
    assert "USING hnsw" in vector_indexes(pg)[HNSW_3]
    assert "WHERE (dimension = 3)" in vector_indexes(pg)[HNSW_3]

    code, out, err = run(capsys, "list", "--url", pg)
    assert code == 0, err
    line = next(line for line in out.splitlines() if HNSW_3 in line)
    assert "hnsw cosine dim 3" in line and "m=16 ef_construction=64" in line

    listed = run_json(capsys, "list", "--url", pg)
    assert listed["backend"] == "postgres" and listed["table"] == "task_embeddings"
    [index] = listed["indexes"]
    assert index["name"] == HNSW_3
    assert (index["method"], index["metric"], index["dimension"]) == ("hnsw", "cosine", 3)
    assert index["parameters"] == {"m": 16, "ef_construction": 64}
    assert index["valid"] is True and index["size"] > 0


@pytest.mark.postgres
def test_create_json_ivfflat_with_options_and_again_builds_nothing(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("create", "--dimension", "3", "--method", "ivfflat", "--metric", "l2")
    first = run_json(capsys, *args, "--lists", "2", "--url", pg)
    name = "task_embeddings_ivfflat_l2_3_idx"
    assert first["built"] is True
    assert first["index"]["name"] == name
    assert first["index"]["parameters"] == {"lists": 2}
    assert "lists='2'" in vector_indexes(pg)[name]

    again = run_json(capsys, *args, "--url", pg)  # no --lists: whatever it was built with
    assert again["built"] is False and again["index"]["name"] == name
    code, out, err = run(capsys, *args, "--lists", "2", "--url", pg)
    assert code == 0, err
    assert "nothing to build" in out


@pytest.mark.postgres
def test_create_with_other_parameters_than_the_existing_index_exits_1(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "create", "--dimension", "3", "--url", pg)[0] == 0
    before = vector_indexes(pg)
    code, out, err = run(capsys, "create", "--dimension", "3", "--m", "8", "--url", pg)
    assert code == 1
    assert f"index {HNSW_3} exists with m=16, ef_construction=64, not m=8" in err
    assert f"shareddb index drop {HNSW_3}" in err
    assert "Traceback" not in err and out == ""
    assert vector_indexes(pg) == before


@pytest.mark.postgres
def test_drop_removes_the_index(pg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "create", "--dimension", "3", "--url", pg)[0] == 0
    assert run(capsys, "create", "--dimension", "3", "--metric", "l2", "--url", pg)[0] == 0
    assert set(vector_indexes(pg)) == {HNSW_3, "task_embeddings_hnsw_l2_3_idx"}

    code, out, err = run(capsys, "drop", HNSW_3, "--url", pg)
    assert code == 0, err
    assert out.strip() == f"dropped index {HNSW_3}"
    assert set(vector_indexes(pg)) == {"task_embeddings_hnsw_l2_3_idx"}

    dropped = run_json(
        capsys, "drop", "task_embeddings_hnsw_l2_3_idx", "--concurrently", "--url", pg
    )
    assert dropped["dropped"] == "task_embeddings_hnsw_l2_3_idx"
    assert vector_indexes(pg) == {}
    assert run_json(capsys, "list", "--url", pg)["indexes"] == []


@pytest.mark.postgres
def test_drop_unknown_index_exits_1_naming_it_and_the_list_command(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "create", "--dimension", "3", "--url", pg)[0] == 0
    code, out, err = run(capsys, "drop", "no_such_idx", "--url", pg)
    assert code == 1
    assert "'no_such_idx' is not a vector index of table task_embeddings" in err
    assert HNSW_3 in err  # the ones there are
    assert "shareddb index list" in err
    assert out == "" and "Traceback" not in err
    assert list(vector_indexes(pg)) == [HNSW_3]


@pytest.mark.postgres
def test_drop_refuses_an_index_that_is_not_a_vector_index(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(pg) as conn:
        before = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'task_embeddings' "
            "ORDER BY indexname"
        ).fetchall()
    assert before  # the primary key and unique constraint at least
    other = before[0][0]
    code, _, err = run(capsys, "drop", str(other), "--url", pg)
    assert code == 1
    assert f"{other!r} is not a vector index" in err
    with psycopg.connect(pg) as conn:
        after = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'task_embeddings' "
            "ORDER BY indexname"
        ).fetchall()
    assert after == before


@pytest.mark.postgres
def test_table_option_works_on_a_table_of_your_own(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with DbService(pg) as db:
        load(db, table="doc_vectors")
    created = run_json(capsys, "create", "--dimension", "3", "--table", "doc_vectors", "--url", pg)
    assert created["table"] == "doc_vectors"
    assert created["index"]["name"] == "doc_vectors_hnsw_cosine_3_idx"
    assert list(vector_indexes(pg, "doc_vectors")) == ["doc_vectors_hnsw_cosine_3_idx"]
    assert vector_indexes(pg) == {}  # task_embeddings untouched
    listed = run_json(capsys, "list", "--table", "doc_vectors", "--url", pg)
    assert [i["name"] for i in listed["indexes"]] == ["doc_vectors_hnsw_cosine_3_idx"]

    code, _, err = run(capsys, "drop", "nope", "--table", "doc_vectors", "--url", pg)
    assert code == 1 and "shareddb index list --table doc_vectors" in err


@pytest.mark.postgres
def test_missing_table_exits_1_with_the_fix(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not initialized: task_embeddings does not exist yet.
    code, out, err = run(capsys, "list", "--url", pg_url)
    assert code == 1 and out == ""
    assert "table 'task_embeddings' does not exist" in err and "shareddb init" in err
    code, _, err = run(
        capsys, "create", "--dimension", "3", "--table", "doc_vectors", "--url", pg_url
    )
    assert code == 1
    assert "table 'doc_vectors' does not exist" in err and "create_table()" in err


@pytest.mark.postgres
def test_bad_parameters_exit_2_before_anything_is_built(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "create", "--dimension", "3", "--m", "1", "--url", pg)
    assert code == 2 and out == ""
    assert "m=1 is out of range" in err
    assert vector_indexes(pg) == {}


@pytest.mark.postgres
def test_a_long_build_shows_progress_lines_like_init(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # An open write transaction holds the build back (CREATE INDEX waits for its lock)
    # for longer than the 2 s after which progress lines start.
    blocker = psycopg.connect(pg)
    blocker.execute("LOCK TABLE task_embeddings IN ROW EXCLUSIVE MODE")
    release = threading.Timer(3.5, blocker.rollback)
    release.start()
    try:
        code, out, err = run(capsys, "create", "--dimension", "3", "--url", pg)
    finally:
        release.join()
        blocker.close()
    assert code == 0, err
    progress = [line for line in err.splitlines() if f"building index {HNSW_3}" in line]
    assert progress, err
    assert progress[0].strip().startswith(f"building index {HNSW_3} ... ")
    assert f"built index {HNSW_3}" in out


# -- bad usage (checked before anything is opened) ----------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--dimension", "0"], "dimension=0 is out of range"),
        (["--dimension", "5000"], "dimension 5000 can't be indexed"),
        (["--dimension", "3", "--m", "40"], "ef_construction=64 must be at least 2 * m = 80"),
        (["--dimension", "3", "--ef-construction", "2000"], "ef_construction=2000 is out of range"),
        (["--dimension", "3", "--lists", "4"], "--lists sets an IVFFlat index"),
        (["--dimension", "3", "--method", "ivfflat", "--m", "8"], "--m set an HNSW index"),
        (["--dimension", "3", "--method", "ivfflat", "--lists", "0"], "lists=0 is out of range"),
        (["--dimension", "3", "--table", "bad-name"], "--table: table='bad-name' is not a plain"),
        (["--dimension", "3", "--table", "sessions"], "--table: table='sessions' is reserved"),
        (["--dimension", "three"], "invalid int value: 'three'"),
        (["--dimension", "3", "--metric", "hamming"], "invalid choice: 'hamming'"),
        ([], "the following arguments are required: --dimension"),
    ],
)
def test_create_with_bad_parameters_exits_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    url = f"sqlite:///{tmp_path}/never.db"
    capsys.readouterr()
    try:
        code = main(["index", "create", *options, "--url", url])
    except SystemExit as e:  # argparse's own usage errors
        code = int(str(e.code))
    out, err = capsys.readouterr()
    assert code == 2, err
    assert message in err
    assert out == ""
    assert not (tmp_path / "never.db").exists()


def test_index_without_a_subcommand_is_bad_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["index"])
    assert exit_info.value.code == 2
    assert "list" in capsys.readouterr().err


# -- SQLite ----------------------------------------------------------------------------------


@pytest.fixture
def sqlite_db(sqlite_url: str) -> str:
    with DbService(sqlite_url) as db:
        db.initialize()
        load(db)
    return sqlite_url


def test_sqlite_lists_no_index(sqlite_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list", "--url", sqlite_db)
    assert code == 0, err
    assert out.splitlines() == [
        "vector indexes of task_embeddings",
        "  none (SQLite search is exact)",
    ]
    listed = run_json(capsys, "list", "--url", sqlite_db)
    assert listed["backend"] == "sqlite" and listed["indexes"] == []


def test_sqlite_create_explains_exact_search_and_exits_1(
    sqlite_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(sqlite_db.removeprefix("sqlite:///"))
    before = path.read_bytes()
    for extra in ([], ["--json"]):
        code, out, err = run(capsys, "create", "--dimension", "3", "--url", sqlite_db, *extra)
        assert code == 1
        assert out == ""
        assert "SQLite has no vector indexes: every search there is exact" in err
        assert "nothing was changed" in err and "Traceback" not in err
    assert path.read_bytes() == before


def test_sqlite_drop_names_the_index_and_exits_1(
    sqlite_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "drop", HNSW_3, "--url", sqlite_db)
    assert code == 1 and out == ""
    assert f"{HNSW_3!r} is not a vector index of table task_embeddings" in err
    assert "SQLite has no vector indexes" in err and "shareddb index list" in err


def test_sqlite_commands_create_no_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/absent.db"
    assert run(capsys, "list", "--url", url)[0] == 0
    assert run(capsys, "create", "--dimension", "3", "--url", url)[0] == 1
    assert not (tmp_path / "absent.db").exists()
