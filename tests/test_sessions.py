"""SessionStorage on both backends: CRUD, errors, listing order and filters, transactions."""

from __future__ import annotations

import itertools
import re
import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from async_twin import both_apis  # noqa: F401 - the `db` fixture: each test on both APIs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shareddb import (
    DbService,
    InvalidSessionError,
    SessionExistsError,
    SessionNotFoundError,
    SessionRecord,
    SessionStorage,
)


def record(name: str, **fields: Any) -> SessionRecord:
    values: dict[str, Any] = {"repo_name": "shareddb", "repo_url": "https://x.test/shareddb"}
    values.update(fields)
    return SessionRecord(session=name, **values)


def is_utc(value: datetime | None) -> bool:
    return value is not None and value.utcoffset() == timedelta(0)


def row_count(db: DbService) -> int:
    with db.connection() as conn:
        count: int = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
    return count


@pytest.fixture
def sessions(db: DbService) -> SessionStorage:
    return SessionStorage(db)


# -- add / get ---------------------------------------------------------------------------


def test_add_fills_utc_timestamps_and_get_returns_the_same_record(
    sessions: SessionStorage,
) -> None:
    before = datetime.now(UTC)
    added = sessions.add(record("fix-253", branch="main", task_id="md#253"))
    after = datetime.now(UTC)

    assert added.created_at is not None and is_utc(added.created_at)
    assert added.updated_at == added.created_at
    assert before <= added.created_at <= after
    assert (added.session, added.branch, added.task_id) == ("fix-253", "main", "md#253")
    assert sessions.get("fix-253") == added


def test_optional_fields_default_to_none_and_round_trip_as_none(
    sessions: SessionStorage,
) -> None:
    added = sessions.add(SessionRecord(session="bare", repo_name="r", repo_url="u"))
    got = sessions.get("bare")
    assert got == added
    assert got is not None and got.branch is None and got.task_id is None


def test_get_of_an_unknown_session_returns_none(sessions: SessionStorage) -> None:
    assert sessions.get("nobody") is None


def test_timestamps_keep_microseconds_and_given_times_are_stored_as_utc(
    sessions: SessionStorage,
) -> None:
    plus_two = timezone(timedelta(hours=2))
    created = datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=plus_two)
    updated = datetime(2024, 3, 1, 0, 0, 0, 1, tzinfo=plus_two)
    added = sessions.add(record("imported", created_at=created, updated_at=updated))

    assert added.created_at == created and is_utc(added.created_at)
    assert added.created_at is not None and added.created_at.hour == 21
    got = sessions.get("imported")
    assert got == added
    assert got is not None and got.created_at is not None and got.updated_at is not None
    assert is_utc(got.created_at) and is_utc(got.updated_at)
    assert (got.created_at.microsecond, got.updated_at.microsecond) == (999_999, 1)


def test_given_created_at_without_updated_at_sets_both_to_it(sessions: SessionStorage) -> None:
    created = datetime(2020, 1, 1, 12, 0, 0, 123_456, tzinfo=UTC)
    added = sessions.add(record("old", created_at=created))
    assert added.created_at == added.updated_at == created
    assert sessions.get("old") == added


def test_duplicate_name_raises_naming_the_session_and_changes_nothing(
    sessions: SessionStorage, db: DbService
) -> None:
    original = sessions.add(record("dup", branch="one", task_id="md#1"))
    with pytest.raises(SessionExistsError, match=r"session 'dup' already exists"):
        sessions.add(record("dup", branch="two", task_id="md#2", repo_name="other"))
    assert sessions.get("dup") == original
    assert row_count(db) == 1


def test_sessions_persist_across_reopening_the_database(db_url: str) -> None:
    with DbService(db_url) as first:
        first.initialize()
        added = SessionStorage(first).add(record("kept", task_id="gh#7"))
    with DbService(db_url) as second:
        second.initialize()
        assert SessionStorage(second).get("kept") == added


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    text=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1),
    created=st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(2999, 12, 31),
        timezones=st.builds(
            timezone, st.integers(-14 * 60, 14 * 60).map(lambda m: timedelta(minutes=m))
        ),
    ),
)
def test_any_text_and_any_aware_time_round_trip_exactly(
    sessions: SessionStorage, text: str, created: datetime
) -> None:
    added = sessions.add(
        SessionRecord(
            session=text, repo_name=text, repo_url=text, branch=text, task_id=text,
            created_at=created,
        )
    )  # fmt: skip
    try:
        got = sessions.get(text)
        assert got == added
        assert got is not None and got.created_at == created and is_utc(got.created_at)
        assert [r.session for r in sessions.list(task_id=text)] == [text]
    finally:
        assert sessions.delete(text)


# -- validation --------------------------------------------------------------------------

NAIVE = datetime(2024, 1, 1)
AWARE = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"session": ""}, r"session name is empty"),
        ({"session": None}, r"session name must be a str, got NoneType"),
        ({"session": 5}, r"session name must be a str, got int"),
        ({"session": b"x"}, r"session name must be a str, got bytes"),
        ({"session": "a\x00b"}, r"session name 'a\\x00b' contains a NUL character"),
        ({"session": "\ud800"}, r"not valid Unicode text"),
        ({"repo_name": ""}, r"session 's': repo_name is empty"),
        ({"repo_url": None}, r"session 's': repo_url must be a str, got NoneType"),
        ({"branch": ""}, r"session 's': branch is empty; pass non-empty text, or None"),
        ({"task_id": 253}, r"session 's': task_id must be a str, got int"),
        ({"task_id": "md\x00253"}, r"task_id 'md\\x00253' contains a NUL character"),
        ({"created_at": NAIVE}, r"session 's': created_at=2024-01-01T00:00:00 has no time zone"),
        ({"updated_at": "2024-01-01"}, r"updated_at must be a datetime or None, got str"),
        (
            {"created_at": AWARE, "updated_at": AWARE - timedelta(microseconds=1)},
            r"updated_at=.* is before created_at=",
        ),
    ],
)
def test_invalid_record_fields_raise_a_clear_error(fields: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"session": "s", "repo_name": "r", "repo_url": "u"}
    values.update(fields)
    with pytest.raises(InvalidSessionError, match=message):
        SessionRecord(**values)


def test_session_record_is_frozen_and_keyword_only() -> None:
    r = record("frozen")
    with pytest.raises(AttributeError):
        r.branch = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        SessionRecord("s", "r", "u")  # type: ignore[call-arg]


def test_add_of_something_other_than_a_record_raises_and_stores_nothing(
    sessions: SessionStorage, db: DbService
) -> None:
    for bad in [{"session": "s", "repo_name": "r", "repo_url": "u"}, ("s", "r", "u"), None]:
        with pytest.raises(InvalidSessionError, match=r"add\(\) takes a SessionRecord"):
            sessions.add(bad)  # type: ignore[arg-type]
    assert row_count(db) == 0


def test_bad_names_raise_in_get_update_delete_and_get_by_task(sessions: SessionStorage) -> None:
    sessions.add(record("keep"))
    bad_names: list[Any] = ["", None, 7, "x\x00y"]
    for name in bad_names:
        with pytest.raises(InvalidSessionError):
            sessions.get(name)
        with pytest.raises(InvalidSessionError):
            sessions.update(name, branch="b")
        with pytest.raises(InvalidSessionError):
            sessions.delete(name)
        with pytest.raises(InvalidSessionError):
            sessions.get_by_task(name)
    assert [r.session for r in sessions.list()] == ["keep"]


BAD_LIST_ARGUMENTS: list[tuple[dict[str, Any], str]] = [
    ({"limit": -1}, r"limit=-1 must be a whole number >= 0"),
    ({"limit": True}, r"limit=True must be a whole number"),
    ({"limit": 1.5}, r"limit=1.5 must be a whole number"),
    ({"repo_name": 3}, r"repo_name filter must be a str"),
    ({"task_id": ""}, r"task_id filter is empty"),
]


def test_bad_list_arguments_raise_a_clear_error(sessions: SessionStorage) -> None:
    sessions.add(record("listed"))
    for kwargs, message in BAD_LIST_ARGUMENTS:
        with pytest.raises(InvalidSessionError, match=message):
            sessions.list(**kwargs)


# -- list / get_by_task ------------------------------------------------------------------


def test_list_returns_newest_first_in_reverse_insertion_order(sessions: SessionStorage) -> None:
    names = [f"s{i:02}" for i in range(25)]
    added = [sessions.add(record(name)) for name in names]
    listed = sessions.list()
    assert [r.session for r in listed] == names[::-1]
    assert listed == added[::-1]
    created = [r.created_at for r in listed]
    assert created == sorted(created, reverse=True)  # type: ignore[type-var]


def test_sessions_created_in_the_same_microsecond_list_newest_first(
    sessions: SessionStorage,
) -> None:
    same = datetime(2025, 5, 5, 5, 5, 5, 555_555, tzinfo=UTC)
    names = ["first", "second", "third", "fourth", "fifth"]
    for name in names:
        sessions.add(record(name, created_at=same))
    sessions.add(record("older", created_at=same - timedelta(microseconds=1)))
    sessions.add(record("newer", created_at=same + timedelta(microseconds=1)))
    assert [r.session for r in sessions.list()] == ["newer", *names[::-1], "older"]
    assert [r.session for r in sessions.list(limit=2)] == ["newer", "fifth"]


def test_list_orders_by_created_at_not_by_insertion(sessions: SessionStorage) -> None:
    base = datetime(2023, 1, 1, tzinfo=UTC)
    offsets = [5, 1, 9, 3, 7]
    for i, minutes in enumerate(offsets):
        sessions.add(record(f"m{i}", created_at=base + timedelta(minutes=minutes)))
    expected = [f"m{i}" for i, _ in sorted(enumerate(offsets), key=lambda p: -p[1])]
    assert [r.session for r in sessions.list()] == expected


def test_list_filters_by_repository_and_task_and_limits(sessions: SessionStorage) -> None:
    repos = ["alpha", "beta", "gamma"]
    tasks = ["md#1", "gh#2", None]
    added = []
    for i in range(18):
        repo, task = repos[i % 3], tasks[(i // 3) % 3]
        added.append(sessions.add(record(f"s{i}", repo_name=repo, task_id=task)))
    newest_first = added[::-1]

    for repo in [*repos, "nowhere"]:
        assert sessions.list(repo_name=repo) == [r for r in newest_first if r.repo_name == repo]
    for task in ["md#1", "gh#2", "md#404"]:
        assert sessions.list(task_id=task) == [r for r in newest_first if r.task_id == task]
    both = [r for r in newest_first if r.repo_name == "beta" and r.task_id == "gh#2"]
    assert both and sessions.list(repo_name="beta", task_id="gh#2") == both
    assert sessions.list(limit=4) == newest_first[:4]
    assert (
        sessions.list(repo_name="alpha", limit=2)
        == [r for r in newest_first if r.repo_name == "alpha"][:2]
    )
    assert sessions.list(limit=0) == []
    assert sessions.list(limit=1000) == newest_first


def test_get_by_task_returns_the_newest_session_of_the_task(sessions: SessionStorage) -> None:
    sessions.add(record("first-try", task_id="md#253"))
    sessions.add(record("other", task_id="md#254"))
    newest = sessions.add(record("second-try", task_id="md#253"))
    sessions.add(record("unrelated"))
    assert sessions.get_by_task("md#253") == newest
    assert sessions.get_by_task("md#999") is None


# -- update ------------------------------------------------------------------------------


def test_update_changes_fields_moves_updated_at_and_keeps_created_at(
    sessions: SessionStorage,
) -> None:
    added = sessions.add(record("work", branch="main", task_id="md#1"))
    assert added.created_at is not None and added.updated_at is not None
    updated = sessions.update("work", branch="feature", task_id="gh#9", repo_url="git@x:y")
    assert (updated.branch, updated.task_id, updated.repo_url) == ("feature", "gh#9", "git@x:y")
    assert updated.repo_name == added.repo_name
    assert updated.created_at == added.created_at
    assert updated.updated_at is not None and updated.updated_at > added.updated_at
    assert is_utc(updated.updated_at)
    assert sessions.get("work") == updated


def test_update_can_clear_optional_fields_with_none(sessions: SessionStorage) -> None:
    sessions.add(record("clear", branch="main", task_id="md#1"))
    cleared = sessions.update("clear", branch=None, task_id=None)
    assert cleared.branch is None and cleared.task_id is None
    assert sessions.get("clear") == cleared
    assert sessions.get_by_task("md#1") is None


def test_update_always_moves_updated_at_forward_even_without_changes(
    sessions: SessionStorage,
) -> None:
    future = datetime.now(UTC) + timedelta(days=1)
    added = sessions.add(record("ahead", created_at=future))
    stamps = [added.updated_at]
    for _ in range(5):
        stamps.append(sessions.update("ahead").updated_at)
    assert all(a < b for a, b in itertools.pairwise(stamps))  # type: ignore[operator]
    assert stamps[1] == future + timedelta(microseconds=1)
    got = sessions.get("ahead")
    assert got is not None and got.updated_at == stamps[-1] and got.created_at == future


BAD_UPDATES: list[tuple[dict[str, Any], str]] = [
    ({"colour": "red"}, r"session 'u': update\(\) got unknown field 'colour'; the fields"),
    ({"session": "v"}, r"can't change session: it is the primary key"),
    ({"created_at": AWARE}, r"can't change created_at"),
    ({"updated_at": AWARE}, r"can't change updated_at"),
    ({"repo_name": ""}, r"session 'u': repo_name is empty"),
    ({"repo_url": None}, r"session 'u': repo_url must be a str, got NoneType"),
    ({"branch": 5}, r"session 'u': branch must be a str, got int"),
    ({"task_id": "md\x00"}, r"task_id 'md\\x00' contains a NUL character"),
    ({"branch": "ok", "nope": 1}, r"unknown field 'nope'"),
]


def test_bad_updates_raise_and_change_nothing(sessions: SessionStorage) -> None:
    added = sessions.add(record("u", branch="main"))
    for changes, message in BAD_UPDATES:
        with pytest.raises(InvalidSessionError, match=message):
            sessions.update("u", **changes)
    assert sessions.get("u") == added


def test_update_of_a_missing_session_raises_not_found_naming_it(
    sessions: SessionStorage, db: DbService
) -> None:
    with pytest.raises(SessionNotFoundError, match=r"session 'ghost' does not exist"):
        sessions.update("ghost", branch="main")
    assert row_count(db) == 0


# -- delete ------------------------------------------------------------------------------


def test_delete_reports_whether_the_session_existed(sessions: SessionStorage) -> None:
    sessions.add(record("gone"))
    sessions.add(record("stays"))
    assert sessions.delete("gone") is True
    assert sessions.delete("gone") is False
    assert sessions.get("gone") is None
    assert [r.session for r in sessions.list()] == ["stays"]


def test_a_deleted_name_can_be_added_again_and_lists_as_newest(sessions: SessionStorage) -> None:
    sessions.add(record("a"))
    sessions.add(record("b"))
    sessions.delete("a")
    again = sessions.add(record("a", branch="new"))
    assert sessions.list()[0] == again
    assert [r.session for r in sessions.list()] == ["a", "b"]


# -- transactions (conn=) ----------------------------------------------------------------


def test_methods_join_the_callers_transaction_and_roll_back_with_it(
    sessions: SessionStorage,
) -> None:
    kept = sessions.add(record("kept"))
    with pytest.raises(RuntimeError, match="boom"), sessions.db.transaction() as conn:
        sessions.add(record("new"), conn=conn)
        sessions.update("kept", branch="changed", conn=conn)
        assert sessions.delete("kept", conn=conn) is True
        assert sessions.get("new", conn=conn) is not None
        assert [r.session for r in sessions.list(conn=conn)] == ["new"]
        raise RuntimeError("boom")
    assert sessions.get("new") is None
    assert sessions.get("kept") == kept


def test_methods_in_the_callers_transaction_commit_with_it(sessions: SessionStorage) -> None:
    with sessions.db.transaction() as conn:
        a = sessions.add(record("a", task_id="md#1"), conn=conn)
        b = sessions.update("a", branch="dev", conn=conn)
        assert sessions.get_by_task("md#1", conn=conn) == b
    assert a.created_at == b.created_at
    assert sessions.get("a") == b


def test_a_refused_add_or_update_leaves_the_callers_transaction_usable(
    sessions: SessionStorage,
) -> None:
    sessions.add(record("taken"))
    with sessions.db.transaction() as conn:
        with pytest.raises(SessionExistsError):
            sessions.add(record("taken"), conn=conn)
        with pytest.raises(SessionNotFoundError):
            sessions.update("missing", branch="x", conn=conn)
        sessions.add(record("after"), conn=conn)
    assert [r.session for r in sessions.list()] == ["after", "taken"]


def test_conn_of_the_wrong_kind_is_refused(sessions: SessionStorage) -> None:
    with pytest.raises(InvalidSessionError, match=r"conn=.* is not a (sqlite|postgres) conn"):
        sessions.add(record("x"), conn=object())
    assert sessions.get("x") is None


# -- concurrency -------------------------------------------------------------------------


def test_concurrent_adds_of_one_name_let_exactly_one_win(sessions: SessionStorage) -> None:
    threads, rounds = 4, 15
    barrier = threading.Barrier(threads)
    outcomes: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        for n in range(rounds):
            barrier.wait(timeout=30)
            try:
                sessions.add(record(f"race-{n}", branch=f"t{index}"))
                result = "won"
            except SessionExistsError:
                result = "lost"
            except BaseException as e:  # reported below
                with lock:
                    errors.append(e)
                return
            with lock:
                outcomes.append((n, result))

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors
    for n in range(rounds):
        results = sorted(r for m, r in outcomes if m == n)
        assert results == ["lost"] * (threads - 1) + ["won"]
    assert len(sessions.list()) == rounds


# -- schema ------------------------------------------------------------------------------


def test_sessions_table_has_indexes_on_task_id_and_repo_name(db: DbService) -> None:
    with db.connection() as conn:
        if db.get_backend_type() == "sqlite":
            names = [row[1] for row in conn.execute("PRAGMA index_list('sessions')")]
            first_columns = {
                conn.execute(f"PRAGMA index_info('{name}')").fetchone()[2] for name in names
            }
        else:
            rows = conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                "WHERE i.indrelid = 'sessions'::regclass"
            ).fetchall()
            first_columns = {row[0] for row in rows}
    assert {"session", "task_id", "repo_name"} <= first_columns


def test_sqlite_stores_fixed_width_utc_text_that_sorts_by_time(tmp_path: Any) -> None:
    with DbService(f"sqlite:///{tmp_path}/s.db") as db:
        db.initialize()
        sessions = SessionStorage(db)
        stamps = [
            datetime(2024, 1, 1, 0, 0, 0, 5, tzinfo=UTC),
            datetime(2024, 1, 1, 0, 0, 0, 50, tzinfo=timezone(timedelta(hours=-3))),
            datetime(999, 1, 1, tzinfo=UTC),
        ]
        for i, stamp in enumerate(stamps):
            sessions.add(record(f"t{i}", created_at=stamp))
        with db.connection() as conn:
            raw = conn.execute("SELECT created_at FROM sessions ORDER BY created_at").fetchall()
    texts = [row[0] for row in raw]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", t) for t in texts)
    assert [datetime.fromisoformat(t) for t in texts] == sorted(stamps)


@pytest.mark.postgres
def test_postgres_returns_utc_whatever_the_session_time_zone(pg_url: str) -> None:
    separator = "&" if "?" in pg_url else "?"
    url = f"{pg_url}{separator}options=-c%20TimeZone%3DAsia/Kolkata"
    with DbService(url) as db:
        db.initialize()
        sessions = SessionStorage(db)
        added = sessions.add(record("tz"))
        with db.connection() as conn:
            raw = conn.execute("SELECT created_at FROM sessions").fetchone()[0]
        got = sessions.get("tz")
    assert raw.utcoffset() == timedelta(hours=5, minutes=30)  # the setting took effect
    assert got == added and got is not None and is_utc(got.created_at)
    assert got.created_at == raw


@pytest.mark.postgres
def test_both_backends_give_the_same_answers_for_the_same_operations(
    sqlite_url: str, pg_url: str
) -> None:
    base = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)

    def script(db: DbService) -> list[Any]:
        s = SessionStorage(db)
        out: list[Any] = []
        for i in range(12):
            s.add(
                record(
                    f"n{i}",
                    repo_name=f"repo{i % 3}",
                    task_id=f"md#{i % 4}" if i % 5 else None,
                    created_at=base + timedelta(seconds=i // 2),  # pairs share a time
                )
            )
        out.append(s.list())
        out.append(s.list(repo_name="repo1"))
        out.append(s.list(task_id="md#2", limit=2))
        out.append(s.get_by_task("md#3"))
        s.delete("n4")
        out.append([r.session for r in s.list()])
        return out

    with DbService(sqlite_url) as lite, DbService(pg_url) as pg:
        lite.initialize()
        pg.initialize()
        assert script(lite) == script(pg)


def test_the_table_is_plain_sql_and_refuses_an_empty_name_by_itself(db: DbService) -> None:
    # Applications may read the table directly; its CHECK guards hand-written writes.
    SessionStorage(db).add(record("raw", task_id="md#5"))
    with db.connection() as conn:
        row = conn.execute("SELECT session, task_id FROM sessions").fetchone()
    assert tuple(row) == ("raw", "md#5")
    with (
        pytest.raises((sqlite3.IntegrityError, psycopg.errors.CheckViolation)),
        db.connection() as conn,
    ):
        conn.execute("UPDATE sessions SET session = ''")
