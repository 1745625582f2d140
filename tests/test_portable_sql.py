"""Portable statements: db.execute / executemany / query / query_one / query_value / iter_query.

One SQL text with ``:name`` placeholders on both engines: the scan that finds them
(property tests against tricky SQL), values of every portable type round-tripping,
hostile values as data, transactions, row counts, streaming, and the errors raised
before anything is written.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum
from typing import Any

import numpy as np
import pytest
from async_twin import both_apis  # noqa: F401 - the `db` fixture: each test on both APIs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shareddb import (
    DbService,
    InvalidArgumentError,
    InvalidEmbeddingError,
    SessionRecord,
    SessionStorage,
)
from shareddb._sql.lexer import parse

# The portable layout: one column of each type, declared the same way on both engines.
PORTABLE_TABLE = """
CREATE TABLE portable (
    id BIGINT PRIMARY KEY,
    flag BOOLEAN,
    count BIGINT,
    ratio DOUBLE PRECISION,
    label TEXT,
    data BYTEA,
    moment TIMESTAMPTZ,
    day DATE,
    amount NUMERIC,
    doc JSONB,
    embedding VECTOR
)
"""
COLUMNS = ("flag", "count", "ratio", "label", "data", "moment", "day", "amount", "doc", "embedding")
INSERT = (
    "INSERT INTO portable (id, flag, count, ratio, label, data, moment, day, amount, doc, "
    "embedding) VALUES (:id, :flag, :count, :ratio, :label, :data, :moment, :day, :amount, "
    ":doc, :embedding)"
)
ANY_EXAMPLES = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def table(db: DbService) -> DbService:
    db.execute(PORTABLE_TABLE)
    return db


def count(db: DbService, table: str = "portable") -> int:
    value = db.query_value(f"SELECT count(*) FROM {table}")
    assert isinstance(value, int)
    return value


def row(id: int = 1, **values: Any) -> dict[str, Any]:
    return {"id": id, **dict.fromkeys(COLUMNS), **values}


# -- the scan: placeholders found, everything else left as written -------------------------

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
TEXT = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12
) | st.sampled_from([":x", "%", "%s", "%(x)s", "?", "$1", "::text", "--", "/*", "*/", "'", '"'])
# (SQL piece, the text psycopg runs for it on PostgreSQL, placeholder name or None)
Piece = tuple[str, str, str | None]


def code(sql: str) -> Piece:
    return sql, sql.replace("%", "%%"), None


def placeholders() -> st.SearchStrategy[Piece]:
    return NAMES.map(lambda n: (f":{n}", f"%({n})s", n))


def string_literals() -> st.SearchStrategy[Piece]:
    return TEXT.map(lambda t: code("'" + t.replace("'", "''") + "'"))


def quoted_identifiers() -> st.SearchStrategy[Piece]:
    return TEXT.map(lambda t: code('"' + t.replace('"', '""') + '"'))


def line_comments() -> st.SearchStrategy[Piece]:
    return TEXT.filter(lambda t: "\n" not in t).map(lambda t: code(f"-- {t}\n"))


def e_strings() -> st.SearchStrategy[Piece]:
    escapes = st.sampled_from(["\\'", "\\\\", "''", "\\n", "\\x41"])
    chunks = st.lists(TEXT.map(lambda t: t.replace("\\", "").replace("'", "")) | escapes)
    return chunks.map(lambda c: code("E'" + "".join(c) + "'"))


def nested_comments() -> st.SearchStrategy[Piece]:
    inner = TEXT.map(lambda t: t.replace("*/", "").replace("/*", ""))
    return st.tuples(inner, inner, inner).map(lambda p: code(f"/* {p[0]} /* {p[1]} */ {p[2]} */"))


def flat_comments() -> st.SearchStrategy[Piece]:
    return TEXT.map(lambda t: code("/* " + t.replace("*/", "").replace("/", "") + " */"))


def dollar_quotes() -> st.SearchStrategy[Piece]:
    body = TEXT.map(lambda t: t.replace("$", ""))
    tag = st.from_regex(r"([a-z_][a-z0-9_]{0,3})?", fullmatch=True)
    return st.tuples(tag, body).map(lambda p: code(f"${p[0]}${p[1]}${p[0]}$"))


POSTGRES_CODE = st.sampled_from(
    [
        "SELECT", "x::text", "'a'::varchar(3)", "a[lo:hi]", "a[1:2]", "a[:1]", "f(a := 1)",
        "100 % 7", "LIKE 'a%'", "(", ")", "a$1", "?|", "@", "#", "=", ",", "x.y", "$", "1e5",
    ]
)  # fmt: skip
SQLITE_CODE = st.sampled_from(
    ["SELECT", "[a:b]", "[x %s]", "`a:b`", "`a``b`", "X'00ff'", "100 % 7", "(", ")", "=", ",",
     "a$", "x.y", "1e5"]
)  # fmt: skip


def postgres_sql() -> st.SearchStrategy[list[Piece]]:
    piece = st.one_of(
        placeholders(), string_literals(), quoted_identifiers(), line_comments(), e_strings(),
        nested_comments(), dollar_quotes(), POSTGRES_CODE.map(code),
    )  # fmt: skip
    return st.lists(piece, max_size=12)


def sqlite_sql() -> st.SearchStrategy[list[Piece]]:
    piece = st.one_of(
        placeholders(), string_literals(), quoted_identifiers(), line_comments(),
        flat_comments(), SQLITE_CODE.map(code),
    )  # fmt: skip
    return st.lists(piece, max_size=12)


def expected_names(pieces: list[Piece]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for _, _, name in pieces if name is not None))


@settings(max_examples=400, deadline=None)
@given(pieces=postgres_sql())
def test_postgres_translation_changes_nothing_but_placeholders_and_percent_signs(
    pieces: list[Piece],
) -> None:
    sql = " ".join(p[0] for p in pieces)
    parsed = parse(sql, "postgres")
    assert parsed.text == " ".join(p[1] for p in pieces)
    assert parsed.names == expected_names(pieces)


@settings(max_examples=400, deadline=None)
@given(pieces=sqlite_sql())
def test_sqlite_runs_the_text_as_written_and_finds_the_same_names(pieces: list[Piece]) -> None:
    sql = " ".join(p[0] for p in pieces)
    parsed = parse(sql, "sqlite")
    assert parsed.text == sql
    assert parsed.names == expected_names(pieces)


@pytest.mark.parametrize(
    ("sql", "names", "text"),
    [
        ("SELECT :a, :b, :a", ("a", "b"), "SELECT %(a)s, %(b)s, %(a)s"),
        ("SELECT x::int, :y::text", ("y",), "SELECT x::int, %(y)s::text"),
        ("SELECT 'it''s :no', E'\\' :no', :yes", ("yes",),
         "SELECT 'it''s :no', E'\\' :no', %(yes)s"),
        ("SELECT $f$ :no $$ :no $f$, $$:no$$", (), "SELECT $f$ :no $$ :no $f$, $$:no$$"),
        ("SELECT /* :no /* :no */ :no */ 1 -- :no\n, :yes", ("yes",),
         "SELECT /* :no /* :no */ :no */ 1 -- :no\n, %(yes)s"),
        ('SELECT 1 AS ":no", a[lo:hi], a[:hi]', ("hi",), 'SELECT 1 AS ":no", a[lo:hi], a[%(hi)s]'),
        ("SELECT * FROM t WHERE a LIKE 'x%' AND b = :b", ("b",),
         "SELECT * FROM t WHERE a LIKE 'x%%' AND b = %(b)s"),
        ("SELECT f(a := :a)", ("a",), "SELECT f(a := %(a)s)"),
    ],
)  # fmt: skip
def test_postgres_placeholders_in_tricky_sql(sql: str, names: tuple[str, ...], text: str) -> None:
    parsed = parse(sql, "postgres")
    assert (parsed.names, parsed.text) == (names, text)


@pytest.mark.parametrize(
    ("sql", "names"),
    [
        ("SELECT :a, [:no], `:no`, ':no', \":no\", :b", ("a", "b")),
        ("SELECT /* :no /* */ :yes", ("yes",)),  # SQLite's comments don't nest
        ("SELECT 'a\\' :yes", ("yes",)),  # nor do backslashes escape
    ],
)
def test_sqlite_placeholders_follow_sqlites_own_lexer(sql: str, names: tuple[str, ...]) -> None:
    assert parse(sql, "sqlite").names == names


@pytest.mark.parametrize(
    ("sql", "verb", "reads_only"),
    [
        ("select 1", "SELECT", True),
        ("(SELECT 1) UNION (SELECT 2)", "SELECT", True),
        ("WITH a AS (SELECT 1), b AS (SELECT 2) SELECT * FROM a, b", "SELECT", True),
        ("VALUES (1), (2)", "VALUES", True),
        ("-- a comment\n/* another */ insert into t values (1)", "INSERT", False),
        ("WITH old AS (SELECT 1) DELETE FROM t", "DELETE", False),
        ("CREATE TABLE t (x int)", "", False),
    ],
)
def test_the_scan_tells_what_a_statement_does(sql: str, verb: str, reads_only: bool) -> None:
    for dialect in ("postgres", "sqlite"):
        parsed = parse(sql, dialect)  # type: ignore[arg-type]
        assert (parsed.verb, parsed.reads_only) == (verb, reads_only)


@pytest.mark.parametrize(
    ("sql", "dialect", "message"),
    [
        ("SELECT * FROM t WHERE a = ?", "sqlite", "another style"),
        ("SELECT * FROM t WHERE a = ?1", "sqlite", "another style"),
        ("SELECT * FROM t WHERE a = @a", "sqlite", "another style"),
        ("SELECT * FROM t WHERE a = $a", "sqlite", "another style"),
        ("SELECT * FROM t WHERE a = $1", "postgres", "another style"),
        ("SELECT x::text", "sqlite", "CAST"),
        ("SELECT :1abc", "sqlite", "not a plain name"),
        ("SELECT :naïve", "postgres", "not a plain name"),
    ],
)
def test_sql_this_api_cannot_run_is_refused_by_the_scan(
    sql: str, dialect: Any, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        parse(sql, dialect)


# -- the scan on the real engines ----------------------------------------------------------

# Value expressions per engine: (SQL, the value it selects); placeholders take `text`.
ALIAS = st.text(
    st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="]"), max_size=8
)


def selected_values(kind: str) -> st.SearchStrategy[tuple[str, Any, str | None]]:
    """(expression, expected value, placeholder name or None) for `kind`'s own lexer."""
    plain = TEXT.map(lambda t: ("'" + t.replace("'", "''") + "'", t, None))
    named = st.tuples(NAMES, TEXT).map(lambda p: (f"CAST(:{p[0]} AS TEXT)", p[1], p[0]))
    if kind == "sqlite":
        blobs = st.binary(max_size=6).map(lambda b: (f"X'{b.hex()}'", b, None))
        return st.one_of(plain, named, blobs)
    escaped = TEXT.map(
        lambda t: ("E'" + t.replace("\\", "\\\\").replace("'", "\\'") + "'", t, None)
    )
    dollars = TEXT.filter(lambda t: "$" not in t).map(lambda t: (f"$q${t}$q$", t, None))
    cast = st.tuples(NAMES, TEXT).map(lambda p: (f":{p[0]}::text", p[1], p[0]))
    return st.one_of(plain, named, escaped, dollars, cast)


def quoted_alias(kind: str, text: str) -> st.SearchStrategy[str]:
    forms = ['"' + text.replace('"', '""') + '"']
    if kind == "sqlite":
        forms += ["[" + text + "]", "`" + text.replace("`", "``") + "`"]
    return st.sampled_from(forms)


@ANY_EXAMPLES
@given(data=st.data())
def test_tricky_sql_selects_exactly_its_literals_and_values(db: DbService, data: Any) -> None:
    kind = db.get_backend_type()
    comment = "/* :c % ' */" if kind == "sqlite" else "/* :c /* % ' */ $$ */"
    items = data.draw(st.lists(selected_values(kind), min_size=1, max_size=6))
    columns, expected, params = [], {}, {}
    for i, (expression, value, name) in enumerate(items):
        alias_text = f"{i}{data.draw(ALIAS)}"
        alias = data.draw(quoted_alias(kind, alias_text))
        if name is not None:
            params.setdefault(name, value)
            value = params[name]
        columns.append(f"{expression} {comment} AS {alias} -- :no %s\n")
        expected[alias_text] = value
    result = db.query("SELECT " + ", ".join(columns), params)
    assert result == [expected]


def test_percent_signs_reach_postgresql_as_written(table: DbService) -> None:
    table.executemany(
        "INSERT INTO portable (id, label) VALUES (:id, :label)",
        [{"id": 1, "label": "a%c"}, {"id": 2, "label": "abc"}, {"id": 3, "label": "xbc"}],
    )
    sql = "SELECT id FROM portable WHERE label LIKE 'a%' /* 100% */ AND id > :low ORDER BY id"
    assert [r["id"] for r in table.query(sql, {"low": 0})] == [1, 2]
    assert table.query_value("SELECT label FROM portable WHERE label LIKE 'a\\%c' ESCAPE '\\'") == (
        "a%c"
    )


# -- values of every portable type ---------------------------------------------------------

UTC_OFFSETS = st.builds(
    timezone, st.integers(-14 * 60, 14 * 60).map(lambda m: timedelta(minutes=m))
)
MOMENTS = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=UTC_OFFSETS
)
# SQLite keeps 15 significant digits in a NUMERIC column (see README "Portable SQL").
DECIMALS = st.builds(
    lambda sign, digits, exponent: Decimal((sign, tuple(digits), exponent)),
    st.integers(0, 1),
    st.lists(st.integers(0, 9), min_size=1, max_size=15),
    st.integers(-30, 30),
)
JSON_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(-1e15, 1e15, allow_nan=False)
    | JSON_TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(JSON_TEXT, inner, max_size=4),
    max_leaves=12,
)
FINITE_FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
VALUES = {
    "flag": st.booleans(),
    "count": st.integers(-(2**63), 2**63 - 1),
    "ratio": st.floats(allow_nan=False),
    "label": st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00")),
    "data": st.binary(max_size=64),
    "moment": MOMENTS,
    "day": st.dates(),
    "amount": DECIMALS,
    "doc": st.dictionaries(JSON_TEXT, JSON_VALUES, max_size=4) | st.lists(JSON_VALUES, max_size=4),
    "embedding": hnp.arrays(np.float32, st.integers(1, 16), elements=FINITE_FLOAT32),
}


def same(column: str, got: Any, sent: Any) -> bool:
    if sent is None:
        return got is None
    if column == "embedding":
        return isinstance(got, np.ndarray) and got.dtype == np.float32 and np.array_equal(got, sent)
    if column == "moment":
        return bool(got == sent) and got.tzinfo is UTC
    return type(got) is type(sent) and bool(got == sent)


@ANY_EXAMPLES
@given(values=st.fixed_dictionaries({c: st.none() | s for c, s in VALUES.items()}))
def test_a_value_of_every_portable_type_round_trips_equal(
    table: DbService, values: dict[str, Any]
) -> None:
    table.execute("DELETE FROM portable")
    assert table.execute(INSERT, {"id": 1, **values}) == 1
    got = table.query_one("SELECT * FROM portable WHERE id = :id", {"id": 1})
    assert got is not None
    assert list(got) == ["id", *COLUMNS]
    for column, sent in values.items():
        assert same(column, got[column], sent), (column, got[column], sent)


def test_typed_values_come_back_the_same_through_every_read(table: DbService) -> None:
    moment = datetime(2025, 1, 31, 9, 30, 0, 123456, tzinfo=timezone(timedelta(hours=-5)))
    values = row(
        flag=False, moment=moment, day=date(2025, 1, 31), amount=Decimal("12.5"),
        doc={"labels": ["a", "b"], "n": 1}, embedding=np.array([0.5, -1.0], np.float32),
    )  # fmt: skip
    table.execute(INSERT, values)
    one = table.query_one("SELECT * FROM portable")
    streamed = list(table.iter_query("SELECT * FROM portable"))
    returned = table.query("UPDATE portable SET count = :c RETURNING *", {"c": 7})
    for got in (one, streamed[0], returned[0]):
        assert got is not None
        assert got["moment"] == moment and got["moment"].tzinfo is UTC
        assert got["day"] == date(2025, 1, 31) and got["flag"] is False
        assert got["amount"] == Decimal("12.5") and got["doc"] == values["doc"]
        assert got["embedding"].dtype == np.float32 and got["embedding"].tolist() == [0.5, -1.0]
    assert table.query_value("SELECT moment FROM portable") == moment
    # Aliases, joins and subqueries keep the column's type.
    joined = table.query_one(
        "SELECT p.moment AS m, (SELECT doc FROM portable) AS d FROM portable p "
        "JOIN portable q ON q.id = p.id"
    )
    assert joined == {"m": moment, "d": values["doc"]}


def test_subclasses_and_numpy_scalars_are_stored_as_their_plain_value(table: DbService) -> None:
    class Color(str, Enum):  # noqa: UP042 - str() of this mixin is 'Color.RED', not its value
        RED = "red"

    class Size(IntEnum):
        BIG = 3

    table.execute(
        "INSERT INTO portable (id, label, count, ratio, flag) VALUES (:id, :l, :c, :r, :f)",
        {"id": np.int64(1), "l": Color.RED, "c": Size.BIG, "r": np.float32(0.5), "f": np.bool_(1)},
    )
    assert table.query("SELECT id, label, count, ratio, flag FROM portable") == [
        {"id": 1, "label": "red", "count": 3, "ratio": 0.5, "flag": True}
    ]


# -- hostile values are data ---------------------------------------------------------------

HOSTILE = [
    "'); DROP TABLE portable; --",
    "%s",
    "%(id)s",
    "%%",
    "?",
    "?1",
    "$1",
    "$$ :id $$",
    "::text",
    ":id",
    '"quoted"',
    "\\' OR 1=1 --",
    "/* open",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_text_is_stored_and_read_as_data(table: DbService, value: str) -> None:
    assert (
        table.execute(
            "INSERT INTO portable (id, label, doc) VALUES (:id, :value, :doc)",
            {"id": 1, "value": value, "doc": {value: [value]}},
        )
        == 1
    )
    got = table.query_one(
        "SELECT label, doc FROM portable WHERE label = :value AND id = :id",
        {"value": value, "id": 1},
    )
    assert got == {"label": value, "doc": {value: [value]}}
    assert count(table) == 1


def test_bytes_with_nul_and_quotes_round_trip(table: DbService) -> None:
    data = b"\x00'\"%s?$1::text\x00\xff"
    table.execute("INSERT INTO portable (id, data) VALUES (1, :data)", {"data": data})
    assert table.query_value("SELECT data FROM portable WHERE data = :data", {"data": data}) == data


# -- transactions --------------------------------------------------------------------------


def test_conn_joins_the_callers_transaction_and_a_rollback_undoes_it(table: DbService) -> None:
    with pytest.raises(RuntimeError), table.transaction() as conn:
        table.execute("INSERT INTO portable (id) VALUES (:id)", {"id": 1}, conn=conn)
        table.executemany(
            "INSERT INTO portable (id) VALUES (:id)", [{"id": 2}, {"id": 3}], conn=conn
        )
        assert table.query_value("SELECT count(*) FROM portable", conn=conn) == 3
        assert [
            r["id"] for r in table.iter_query("SELECT id FROM portable ORDER BY id", conn=conn)
        ] == [1, 2, 3]
        assert table.query_one("SELECT max(id) AS m FROM portable", conn=conn) == {"m": 3}
        raise RuntimeError("undo")
    assert count(table) == 0
    with table.transaction() as conn:
        table.execute("INSERT INTO portable (id) VALUES (:id)", {"id": 4}, conn=conn)
    assert table.query("SELECT id FROM portable") == [{"id": 4}]


def test_without_conn_each_call_commits_on_its_own(table: DbService) -> None:
    table.execute("INSERT INTO portable (id) VALUES (1)")
    with pytest.raises(Exception) as raised:
        table.executemany(
            "INSERT INTO portable (id) VALUES (:id)", [{"id": 2}, {"id": 1}]
        )  # the second row breaks the primary key: the first is undone with it
    assert not isinstance(raised.value, InvalidArgumentError)
    assert table.query("SELECT id FROM portable") == [{"id": 1}]


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO portable (id) VALUES (:id)",
        "WITH one AS (SELECT 1) INSERT INTO portable (id) VALUES (:id)",  # SQLite: row by row
    ],
)
def test_executemany_with_conn_is_all_or_nothing_and_the_callers_transaction_goes_on(
    table: DbService, sql: str
) -> None:
    with table.connection() as conn:
        table.execute("INSERT INTO portable (id) VALUES (0)", conn=conn)
        with pytest.raises(Exception) as raised:
            # The third row breaks the primary key: the first two are undone with it.
            table.executemany(sql, [{"id": 1}, {"id": 2}, {"id": 1}], conn=conn)
        assert not isinstance(raised.value, InvalidArgumentError)
        assert table.query("SELECT id FROM portable", conn=conn) == [{"id": 0}]
        table.execute("INSERT INTO portable (id) VALUES (3)", conn=conn)
    assert table.query("SELECT id FROM portable ORDER BY id") == [{"id": 0}, {"id": 3}]


def test_conn_of_another_kind_is_refused(table: DbService) -> None:
    with pytest.raises(InvalidArgumentError, match="is not a"):
        table.query("SELECT 1 AS one", conn=object())  # type: ignore[arg-type]


# -- row counts ----------------------------------------------------------------------------


def test_execute_returns_rows_written_and_minus_one_for_other_statements(
    table: DbService,
) -> None:
    many = table.executemany(
        "INSERT INTO portable (id, count) VALUES (:id, :n)", [{"id": i, "n": i} for i in range(5)]
    )
    assert many == 5
    assert table.execute("UPDATE portable SET label = 'x' WHERE count >= :n", {"n": 3}) == 2
    assert table.execute("WITH old AS (SELECT 1) DELETE FROM portable WHERE id = 0") == 1
    assert (
        table.executemany(
            "WITH q AS (SELECT 1) UPDATE portable SET flag = :f WHERE id = :id",
            [{"f": True, "id": 1}, {"f": True, "id": 2}, {"f": True, "id": 99}],
        )
        == 2
    )
    assert table.execute("SELECT * FROM portable") == -1
    assert table.execute("CREATE TABLE other (x BIGINT)") == -1
    assert table.execute("DELETE FROM portable WHERE id = :id RETURNING id", {"id": 4}) == 1
    assert table.executemany("DELETE FROM portable", []) == 0
    assert count(table) == 3


def test_query_of_a_statement_without_rows_is_empty(table: DbService) -> None:
    assert table.query("UPDATE portable SET flag = true") == []
    assert table.query_one("SELECT * FROM portable") is None
    assert table.query_value("SELECT id FROM portable") is None


# -- streaming -----------------------------------------------------------------------------


def test_iter_query_streams_every_row_in_batches(table: DbService) -> None:
    table.executemany("INSERT INTO portable (id, doc) VALUES (:id, :doc)",
                      [{"id": i, "doc": {"i": i}} for i in range(25)])  # fmt: skip
    rows = table.iter_query(
        "SELECT id, doc FROM portable WHERE id >= :low ORDER BY id", {"low": 5}, batch_size=4
    )
    assert [(r["id"], r["doc"]) for r in rows] == [(i, {"i": i}) for i in range(5, 25)]


def test_iter_query_checks_at_the_call_and_refuses_writes(table: DbService) -> None:
    with pytest.raises(InvalidArgumentError, match=":low"):
        table.iter_query("SELECT id FROM portable WHERE id > :low")
    with pytest.raises(InvalidArgumentError, match="iter_query"):
        table.iter_query("DELETE FROM portable RETURNING id")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidArgumentError, match="batch_size"):
            table.iter_query("SELECT 1", batch_size=bad)  # type: ignore[arg-type]


def test_closing_a_stream_early_gives_the_connection_back(db_url: str) -> None:
    with DbService(db_url, min_size=1, max_size=1, timeout=5) as db:
        db.execute("CREATE TABLE t (id BIGINT)")
        db.executemany("INSERT INTO t (id) VALUES (:id)", [{"id": i} for i in range(10)])
        with contextlib.closing(
            db.iter_query("SELECT id FROM t ORDER BY id", batch_size=2)
        ) as rows:
            assert next(rows) == {"id": 0}
        # Another thread gets the connection (SQLite's lock, PostgreSQL's only pooled one).
        seen: list[Any] = []
        worker = threading.Thread(
            target=lambda: seen.append(db.query_value("SELECT count(*) FROM t"))
        )
        worker.start()
        worker.join(10)
        assert seen == [10]


def _mark_until(db: DbService, stop: int, *, fail: bool) -> None:
    """Set count = 1 on each row an iter_query loop reaches; leave the loop at `stop`."""
    for r in db.iter_query("SELECT id FROM portable ORDER BY id", batch_size=2):
        db.execute("UPDATE portable SET count = 1 WHERE id = :id", {"id": r["id"]})
        with contextlib.suppress(RuntimeError), db.transaction() as conn:
            # A failed block inside the loop is undone on its own.
            db.execute("UPDATE portable SET label = 'x' WHERE id = :id", r, conn=conn)
            raise RuntimeError("undo this block only")
        if r["id"] == stop:
            if fail:
                raise RuntimeError("leave the loop")
            break


@pytest.mark.parametrize("fail", [False, True], ids=["break", "raise"])
def test_writes_inside_an_iter_query_loop_are_kept_however_the_loop_ends(
    table: DbService, fail: bool
) -> None:
    table.executemany(
        "INSERT INTO portable (id, count) VALUES (:id, 0)", [{"id": i} for i in range(5)]
    )
    with contextlib.suppress(RuntimeError):
        _mark_until(table, 2, fail=fail)
    assert table.query("SELECT id, count, label FROM portable ORDER BY id") == [
        {"id": i, "count": int(i <= 2), "label": None} for i in range(5)
    ]
    # The connection is free again: a write from another thread goes through.
    worker = threading.Thread(target=table.execute, args=("DELETE FROM portable",))
    worker.start()
    worker.join(10)
    assert count(table) == 0


@pytest.mark.postgres
def test_iter_query_reads_through_a_server_side_cursor(pg_url: str) -> None:
    with DbService(pg_url) as db:
        db.execute("CREATE TABLE t (id BIGINT)")
        db.execute("INSERT INTO t SELECT generate_series(1, 10)")
        with db.transaction() as conn:
            first = db.iter_query("SELECT id FROM t ORDER BY id", conn=conn, batch_size=3)
            second = db.iter_query("SELECT id FROM t ORDER BY id DESC", conn=conn, batch_size=3)
            pairs = [(next(first)["id"], next(second)["id"]) for _ in range(2)]
            cursors = db.query_value(
                "SELECT count(*) FROM pg_cursors WHERE name LIKE 'shareddb_query_%'", conn=conn
            )
        assert pairs == [(1, 10), (2, 9)]
        assert cursors == 2


# -- statements that would outlive the call on the connection ------------------------------

# (statement, the kind the error names): each changes the session of the connection it
# runs on, which a later call (or shareddb itself) would inherit.
SESSION_STATEMENTS = [
    ("SET search_path TO nowhere", "SET"),
    ("set statement_timeout = 1", "SET"),
    ("/* why */ -- because\n  SET\tTIME ZONE 'UTC'", "SET"),
    ("SET SESSION search_path TO nowhere", "SET"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "SET"),
    ("SET ROLE NONE", "SET"),
    ('SET "search_path" TO nowhere', "SET"),
    ("RESET ALL", "RESET"),
    ("reset search_path", "RESET"),
    ("DISCARD ALL", "DISCARD"),
    ("PRAGMA query_only = ON", "PRAGMA"),
    ("  pragma table_info(portable)", "PRAGMA"),
    ("PREPARE q AS SELECT 1", "PREPARE"),
    ("DEALLOCATE ALL", "DEALLOCATE"),
    ("LISTEN jobs", "LISTEN"),
    ("UNLISTEN *", "UNLISTEN"),
    ("SELECT 1; SET search_path TO nowhere", "SET"),
    ("SELECT 1 /* ; */; -- x\n PRAGMA query_only = ON;", "PRAGMA"),
]


@pytest.mark.parametrize(("sql", "kind"), SESSION_STATEMENTS)
def test_statements_that_change_the_session_are_refused_by_every_call(
    db_url: str, sql: str, kind: str
) -> None:
    # One connection, so that a leaked setting would reach the next call.
    with DbService(db_url, min_size=1, max_size=1) as db:
        db.initialize()
        calls = [
            lambda: db.execute(sql),
            lambda: db.executemany(sql, [{}]),
            lambda: db.query(sql),
            lambda: db.query_one(sql),
            lambda: db.query_value(sql),
            lambda: db.iter_query(sql),
        ]
        for call in calls:
            with pytest.raises(InvalidArgumentError) as raised:
                call()
            message = str(raised.value)
            assert f"{kind} statement" in message
            assert "SET LOCAL" in message and "db.connection()" in message
        # Nothing reached the connection: shareddb's own table is found, and writes work.
        assert db.query_value("SELECT count(*) FROM schema_migrations")
        assert db.execute("CREATE TABLE after (x BIGINT)") == -1


@pytest.mark.parametrize(
    "sql",
    [
        "SET LOCAL search_path TO nowhere",
        "set local statement_timeout = 1",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET CONSTRAINTS ALL DEFERRED",
        "UPDATE portable SET label = 'reset'",
        "SELECT 1 AS reset, 'SET x' AS pragma",
        "-- SET search_path TO nowhere\nSELECT 1",
        "/* PRAGMA query_only = ON; */ SELECT 1;",
        "WITH s AS (SELECT 1) SELECT * FROM s",
    ],
)
def test_statements_that_end_with_the_transaction_are_not_refused(sql: str) -> None:
    for dialect in ("postgres", "sqlite"):
        parse(sql, dialect)  # type: ignore[arg-type]


@pytest.mark.postgres
def test_set_local_inside_a_transaction_ends_with_it(pg_url: str) -> None:
    with DbService(pg_url, min_size=1, max_size=1) as db:
        db.initialize()
        with db.transaction() as conn:
            db.execute("SET LOCAL search_path TO nowhere", conn=conn)
            assert db.query_value("SELECT current_setting('search_path')", conn=conn) == "nowhere"
        assert db.query_value("SELECT current_setting('search_path')") != "nowhere"
        assert db.query_value("SELECT count(*) FROM schema_migrations")


# -- errors before anything is written -----------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, r"the SQL has :id, :label with no value"),
        ({"id": 1}, r"the SQL has :label with no value"),
        ({"id": 1, "label": "x", "extra": 2}, r"params has 'extra' with no matching :name"),
        ({"id": 1, "lable": "x"}, r":label with no value in params and params has 'lable'"),
        ([1, "x"], "positional parameters are not supported"),
        ((1, "x"), "positional parameters are not supported"),
        ("x", "must be a dict"),
        ({"id": 1, "label": "a\x00b"}, "NUL"),
        ({"id": 1, "label": "\ud800"}, "surrogate"),
        ({"id": 2**63, "label": "x"}, "64-bit"),
        ({"id": 1.5, "label": float("nan")}, "NaN"),
        ({"id": 1, "label": uuid.uuid4()}, "UUID"),
        ({"id": 1, "label": (1, 2)}, "tuple"),
        ({"id": 1, "label": {1, 2}}, "set"),
        ({"id": 1, "label": datetime(2025, 1, 1)}, "naive datetime"),
        ({"id": 1, "label": Decimal("NaN")}, "finite"),
        ({"id": 1, "label": {"x": float("inf")}}, "JSON"),
        ({"id": 1, "label": {"x": "\x00"}}, "NUL"),
        ({"id": 1, "label": {"x": object()}}, "JSON"),
    ],
)
def test_bad_names_and_values_raise_before_anything_is_written(
    table: DbService, params: Any, message: str
) -> None:
    sql = "INSERT INTO portable (id, label) VALUES (:id, :label)"
    with pytest.raises(InvalidArgumentError, match=message):
        table.execute(sql, params)
    with pytest.raises(InvalidArgumentError, match=message):
        table.executemany(sql, [{"id": 7, "label": "fine"}, params])
    assert count(table) == 0


def test_a_bad_vector_is_refused_before_anything_is_written(table: DbService) -> None:
    for vector in (np.array([np.nan], np.float32), np.zeros((2, 2), np.float32)):
        with pytest.raises(InvalidEmbeddingError, match="parameter :v"):
            table.execute("INSERT INTO portable (id, embedding) VALUES (1, :v)", {"v": vector})
    assert count(table) == 0


def test_executemany_names_the_bad_row_and_takes_only_a_list_of_dicts(table: DbService) -> None:
    sql = "INSERT INTO portable (id) VALUES (:id)"
    with pytest.raises(InvalidArgumentError, match=r"seq_of_params\[2\]: the SQL has :id"):
        table.executemany(sql, [{"id": 1}, {"id": 2}, {}])
    with pytest.raises(InvalidArgumentError, match="list of dicts"):
        table.executemany(sql, {"id": 1})
    assert count(table) == 0


def test_sql_must_be_text(table: DbService) -> None:
    with pytest.raises(InvalidArgumentError, match="sql must be a str"):
        table.execute(b"SELECT 1")  # type: ignore[arg-type]


# -- SQLite: typed reads without touching sqlite3's process-wide state ---------------------


@pytest.fixture
def sqlite_db(sqlite_url: str) -> Iterator[DbService]:
    with DbService(sqlite_url) as db:
        db.initialize()
        db.execute(PORTABLE_TABLE)
        yield db


def test_sqlite_reads_typed_values_by_declared_type_without_global_converters(
    sqlite_db: DbService,
) -> None:
    converters, adapters = dict(sqlite3.converters), dict(sqlite3.adapters)
    moment = datetime(2025, 1, 31, 9, 30, tzinfo=UTC)
    sqlite_db.execute(
        "CREATE TABLE other (a numeric(10, 2), b timestamp with time zone, c Vector(2), d text)"
    )
    sqlite_db.execute(
        "INSERT INTO other VALUES (:a, :b, :c, :d)",
        {"a": Decimal("1.25"), "b": moment, "c": np.ones(2, np.float32), "d": "2025-01-31"},
    )
    got = sqlite_db.query_one("SELECT * FROM other")
    assert got is not None
    assert (got["a"], got["b"], got["c"].tolist(), got["d"]) == (
        Decimal("1.25"), moment, [1.0, 1.0], "2025-01-31",
    )  # fmt: skip
    # Expressions have no declared type: they come back as SQLite stores them.
    assert sqlite_db.query_value("SELECT max(b) FROM other") == "2025-01-31T09:30:00.000000+00:00"
    # Nothing process-wide changed, no probe view is left, and shareddb's own domains and
    # the raw connection read as before.
    assert (dict(sqlite3.converters), dict(sqlite3.adapters)) == (converters, adapters)
    assert sqlite_db.query_value("SELECT count(*) FROM sqlite_temp_master") == 0
    sessions = SessionStorage(sqlite_db)
    added = sessions.add(SessionRecord(session="s", repo_name="r", repo_url="u"))
    assert sessions.get("s") == added
    with sqlite_db.connection() as conn:
        assert (
            conn.execute("SELECT b FROM other").fetchone()[0] == "2025-01-31T09:30:00.000000+00:00"
        )


def test_sqlite_values_not_in_the_portable_form_come_back_as_stored(sqlite_db: DbService) -> None:
    sqlite_db.execute(
        "INSERT INTO portable (id, moment, day, doc, amount) VALUES (1, 'soon', 'today', "
        "'not json', 'lots')"
    )
    got = sqlite_db.query_one("SELECT moment, day, doc, amount FROM portable")
    assert got == {"moment": "soon", "day": "today", "doc": "not json", "amount": "lots"}
    # SQLite's own CURRENT_TIMESTAMP text (UTC, no offset) reads as UTC.
    sqlite_db.execute("UPDATE portable SET moment = '2025-01-31 09:30:00'")
    assert sqlite_db.query_value("SELECT moment FROM portable") == datetime(
        2025, 1, 31, 9, 30, tzinfo=UTC
    )


def test_sqlite_learns_new_column_types_after_a_schema_change(sqlite_db: DbService) -> None:
    sqlite_db.execute("CREATE TABLE changing (v TEXT)")
    sqlite_db.execute("INSERT INTO changing VALUES ('[1, 2]')")
    sql = "SELECT v FROM changing"
    assert sqlite_db.query_value(sql) == "[1, 2]"
    sqlite_db.execute("DROP TABLE changing")
    sqlite_db.execute("CREATE TABLE changing (v JSONB)")
    sqlite_db.execute("INSERT INTO changing VALUES ('[1, 2]')")
    assert sqlite_db.query_value(sql) == [1, 2]


def test_sqlite_reads_while_another_process_holds_the_write_lock(
    sqlite_db: DbService, sqlite_url: str
) -> None:
    sqlite_db.execute("INSERT INTO portable (id, doc) VALUES (1, :doc)", {"doc": {"a": 1}})
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO portable (id) VALUES (2)")
        assert sqlite_db.query("SELECT doc FROM portable WHERE id = :id", {"id": 1}) == [
            {"doc": {"a": 1}}
        ]
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_sqlite_asks_for_a_statements_column_types_once(sqlite_db: DbService) -> None:
    statements: list[str] = []
    raw = sqlite_db.get_sql()
    assert isinstance(raw, sqlite3.Connection)
    raw.set_trace_callback(statements.append)
    try:
        for _ in range(3):
            sqlite_db.query("SELECT moment, doc FROM portable WHERE id = :id", {"id": 1})
    finally:
        raw.set_trace_callback(None)
    probes = [s for s in statements if s.startswith("CREATE TEMP VIEW")]
    assert len(probes) == 1
    # A later call: the read transaction, one pragma and the statement itself.
    assert statements[-4:] == [
        "BEGIN",
        "PRAGMA schema_version",
        "SELECT moment, doc FROM portable WHERE id = 1",
        "COMMIT",
    ]


def test_calls_open_a_closed_service_on_demand(db_url: str) -> None:
    db = DbService(db_url)
    try:
        assert db.query_value("SELECT :x AS x", {"x": "opened"}) == "opened"
        assert "open" in repr(db)
    finally:
        db.close()


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("WITH d AS (DELETE FROM portable RETURNING id) SELECT count(*) FROM d", "DELETE"),
        ("WITH u AS (UPDATE portable SET label = 'x' RETURNING id) SELECT 1 FROM u", "UPDATE"),
        (
            "WITH a AS (SELECT 1), b AS (SELECT * FROM (WITH i AS (INSERT INTO portable (id) "
            "VALUES (9) RETURNING id) SELECT * FROM i) s) SELECT * FROM b",
            "INSERT",
        ),
        ("WITH m AS (MERGE INTO portable USING t ON true DO NOTHING) SELECT 1", "MERGE"),
        ("SELECT count(*) FROM (SELECT id FROM portable FOR UPDATE) s", "locks rows"),
        ("SELECT id FROM portable FOR NO KEY UPDATE", "locks rows"),
        ("select id from portable for share skip locked", "locks rows"),
        ("SELECT id FROM portable FOR KEY SHARE", "locks rows"),
        ("SELECT id INTO copied FROM portable", "creates a table"),
        ("SELECT 1; DELETE FROM portable", "DELETE"),
    ],
)
def test_read_only_refuses_a_select_that_writes_or_locks(
    table: DbService, sql: str, what: str
) -> None:
    table.execute(INSERT, row(1))
    with pytest.raises(InvalidArgumentError, match="read_only=True") as error:
        table.query(sql, read_only=True)
    assert what in str(error.value)
    assert count(table) == 1 and table.query_value("SELECT label FROM portable") is None


@pytest.mark.parametrize(
    "sql",
    [
        "WITH a AS (SELECT id FROM portable), b AS (SELECT id FROM a) SELECT count(*) FROM b",
        "SELECT count(*) FROM portable WHERE coalesce(label, '') <> 'for update; delete'",
        'SELECT count(*) AS "update" FROM portable',
        "SELECT count(replace(label, 'a', 'b')) + 1 FROM portable",
        "SELECT count(*) FROM portable AS p WHERE p.count IS NULL -- FOR UPDATE",
    ],
)
def test_read_only_takes_selects_that_only_read(table: DbService, sql: str) -> None:
    table.execute(INSERT, row(1))
    assert table.query_value(sql, read_only=True) == 1
