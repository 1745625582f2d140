"""Metadata and its filters: the checks, the semantics, and the same rows on both engines.

`matches` is the reference; every filter here also runs as SQL on a real SQLite table and
(marked postgres) a real jsonb table with a GIN ``jsonb_path_ops`` index, and the ids must
be the ones `matches` picks.
"""

from __future__ import annotations

import enum
import json
import math
import re
import sqlite3
from collections import OrderedDict
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shareddb._vectors import filters
from shareddb._vectors.filters import (
    MAX_FILTER_CONDITIONS,
    MAX_FILTER_DEPTH,
    And,
    Compare,
    Filter,
    Not,
    Operand,
    Or,
    canonical,
    matches,
    parse_filter,
    to_postgres,
    to_sqlite,
)
from shareddb._vectors.metadata import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    check_metadata,
    load_metadata,
)
from shareddb.errors import InvalidArgumentError

HOSTILE = [
    "a'); DROP TABLE t;--",
    "%s",
    "%",
    "?",
    "$1",
    "::text",
    '"',
    "\\",
    "{keys}",
    "/*",
    "--",
    "' OR 1=1 --",
]


# -- engines ---------------------------------------------------------------------------------


def sqlite_table(rows: list[dict[str, Any]]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, metadata TEXT NOT NULL)")
    conn.executemany(
        "INSERT INTO t VALUES (?, ?)",
        [(i, check_metadata(m, f"md#{i}")) for i, m in enumerate(rows)],
    )
    return conn


def sqlite_ids(conn: sqlite3.Connection, f: Filter) -> list[int]:
    sql, params = to_sqlite(f)
    return [row[0] for row in conn.execute(f"SELECT id FROM t WHERE {sql} ORDER BY id", params)]


@pytest.fixture
def pg(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to a fresh database with table t (jsonb metadata, GIN jsonb_path_ops)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id integer PRIMARY KEY, metadata jsonb NOT NULL)")
        conn.execute("CREATE INDEX t_metadata_gin ON t USING gin (metadata jsonb_path_ops)")
        yield conn


def pg_fill(conn: psycopg.Connection[Any], rows: list[dict[str, Any]]) -> None:
    conn.execute("DELETE FROM t")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO t VALUES (%s, %s::jsonb)",
            [(i, check_metadata(m, f"md#{i}")) for i, m in enumerate(rows)],
        )


def pg_ids(conn: psycopg.Connection[Any], f: Filter) -> list[int]:
    sql, params = to_postgres(f)
    return [row[0] for row in conn.execute(f"SELECT id FROM t WHERE {sql} ORDER BY id", params)]


def expected(f: Filter, rows: list[dict[str, Any]]) -> list[int]:
    return [i for i, m in enumerate(rows) if matches(f, m)]


def parts_of(f: Filter) -> Iterator[Filter]:
    """`f` and every filter inside it: each is checked on its own."""
    yield f
    if isinstance(f, And | Or):
        for part in f.parts:
            yield from parts_of(part)
    elif isinstance(f, Not):
        yield from parts_of(f.part)


# -- check_metadata --------------------------------------------------------------------------


class Color(enum.IntEnum):
    RED = 1


def test_metadata_is_stored_as_canonical_json() -> None:
    text = check_metadata({"b": 1.0, "a": [1, "é", None, True], "c": {"y": 2, "x": -0.0}}, "md#1")
    assert text == '{"a":[1,"é",null,true],"b":1.0,"c":{"x":-0.0,"y":2}}'


def test_metadata_takes_subclasses_as_plain_values_and_tuples_as_lists() -> None:
    value = OrderedDict(c=Color.RED, f=np.float64(0.1), t=(1, 2), s=enum.StrEnum("S", "X").X)
    assert check_metadata(value, "md#1") == '{"c":1,"f":0.1,"s":"x","t":[1,2]}'
    assert load_metadata(check_metadata(value, "md#1"))["t"] == [1, 2]


def test_metadata_limits_are_inclusive() -> None:
    assert check_metadata({"i": 2**63 - 1, "j": -(2**63)}, "md#1")
    nested: dict[str, Any] = {}
    inner = nested
    for _ in range(MAX_METADATA_DEPTH - 1):
        inner["a"] = {}
        inner = inner["a"]
    check_metadata(nested, "md#1")  # MAX_METADATA_DEPTH objects, the top one included
    inner["a"] = {}
    with pytest.raises(InvalidArgumentError, match=f"nests deeper than {MAX_METADATA_DEPTH}"):
        check_metadata(nested, "md#1")
    padding = MAX_METADATA_BYTES - len('{"s":""}')
    assert len(check_metadata({"s": "x" * padding}, "md#1")) == MAX_METADATA_BYTES
    with pytest.raises(InvalidArgumentError, match="65,537 bytes as JSON") as e:
        check_metadata({"s": "x" * (padding + 1)}, "md#1")
    assert "MAX_METADATA_BYTES" in str(e.value) and e.value.fix


def _deep_list(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1], "metadata of 'md#1' is a list, not a dict"),
        (None, "metadata of 'md#1' is a NoneType, not a dict"),
        ('{"a": 1}', "metadata of 'md#1' is a str, not a dict"),
        ({"a": {"b": math.nan}}, "metadata of 'md#1': key 'a' → 'b' holds nan"),
        ({"a": [1, math.inf]}, "key 'a' → [1] holds inf"),
        ({"a": -math.inf}, "key 'a' holds -inf"),
        ({1: "x"}, "key 1 is of type int, not str"),
        ({"a": {None: 1}}, "key 'a' → None is of type NoneType, not str"),
        ({"a": {(1, 2): 1}}, "key 'a' → <tuple> is of type tuple, not str"),
        ({"a\x00b": 1}, "key 'a\\x00b' contains a NUL character"),
        ({"a": ["x\x00"]}, "key 'a' → [0] holds text with a NUL character"),
        ({"\ud800": 1}, "key '\\ud800' contains a lone surrogate"),
        ({"a": "\udfff"}, "key 'a' holds text with a lone surrogate"),
        ({"a": 2**63}, "key 'a' holds 9223372036854775808, beyond 64-bit integers"),
        ({"a": -(2**63) - 1}, "beyond 64-bit integers"),
        ({"a": 10**5000}, "key 'a' holds an integer of 16,610 bits, beyond 64-bit integers"),
        ({10**5000: 1}, "key an integer of 16,610 bits is of type int, not str"),
        ({"a": b"x"}, "key 'a' holds a value of type bytes; decode it to str"),
        ({"a": {1, 2}}, "holds a value of type set; store a sorted list"),
        ({"a": datetime(2024, 1, 1)}, "holds a value of type datetime; store its isoformat"),
        ({"a": date(2024, 1, 1)}, "holds a value of type date; store its isoformat"),
        ({"a": Decimal("1.5")}, "holds a value of type Decimal; convert it with float"),
        ({"a": np.int64(3)}, "holds a value of type int64; convert it with int"),
        ({"a": np.float32(3)}, "holds a value of type float32; convert it with int"),
        ({"a": object()}, "holds a value of type object; store JSON values only"),
        ({"a": _deep_list(MAX_METADATA_DEPTH)}, "nests deeper than 32 levels; flatten it"),
    ],
)
def test_bad_metadata_names_the_key_and_the_fix(value: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        check_metadata(value, "md#1")


def test_bad_metadata_errors_carry_a_fix() -> None:
    with pytest.raises(InvalidArgumentError) as e:
        check_metadata({"a": math.nan}, "md#1")
    assert e.value.fix == "store a finite number or None (JSON has no NaN or infinity)"


def test_cyclic_metadata_is_refused_not_recursed() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidArgumentError, match="nests deeper"):
        check_metadata({"l": loop}, "md#1")


def test_load_metadata_reads_both_engines_forms() -> None:
    assert load_metadata('{"a":1,"b":[2.5]}') == {"a": 1, "b": [2.5]}
    assert load_metadata(b'{"a":"\xc3\xa9"}') == {"a": "é"}
    stored = {"a": 1}
    assert load_metadata(stored) is stored  # psycopg's jsonb loader made it; nothing to narrow
    assert load_metadata(None) == {}
    # PostgreSQL prints 1e+19 as 10000000000000000000: it reads back as the float it was
    assert load_metadata('{"a":10000000000000000000}') == {"a": 1e19}
    assert load_metadata({"a": [10**19], "b": {"c": -(10**19)}}) == {"a": [1e19], "b": {"c": -1e19}}
    check_metadata(load_metadata({"a": 10**19}), "md#1")  # and may be stored again
    for bad in ("[1]", "not json", b"\xff"):
        with pytest.raises(InvalidArgumentError, match="stored metadata"):
            load_metadata(bad)


# -- parse_filter: malformed filters ---------------------------------------------------------


def _nested_not(levels: int) -> dict[str, Any]:
    where: dict[str, Any] = {"a": 1}
    for _ in range(levels):
        where = {"$not": where}
    return where


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ([{"a": 1}], "where is a list, not a dict; pass a dict of conditions"),
        (None, "where is NoneType None, not a dict"),
        ("a = 1", "where is str 'a = 1', not a dict"),
        ({1: "x"}, "where has a key of type int (1); metadata keys are str"),
        ({"a": [1, 2]}, "key 'a' is compared with a list; equality takes a scalar"),
        ({"a": (1,)}, "key 'a' is compared with a tuple"),
        ({"a": {}}, "key 'a' is compared with an empty dict; give an operator"),
        ({"a": {"b": 1}}, "key 'a' is compared with a dict holding 'b', not an operator"),
        ({"a": {"$gt": 1, "b": 2}}, "holding 'b', not an operator"),
        ({"a": {1: 2}}, "holding 1, not an operator"),
        ({"a": {"$gtt": 1}}, "key 'a' has the unknown operator '$gtt'; use one of $eq"),
        ({"a": {"$and": [{"b": 1}]}}, "unknown operator '$and'"),
        ({"a": {"$gt": True}}, "key 'a' → $gt takes a number or a str, not bool True"),
        ({"a": {"$lte": None}}, "$lte takes a number or a str, not NoneType None"),
        ({"a": {"$lt": [1]}}, "$lt compares with a list"),
        ({"a": math.nan}, "key 'a' compares with nan; compare with a finite number"),
        ({"a": {"$gte": -math.inf}}, "compares with -inf"),
        ({"a": {"$in": [1, math.inf]}}, "key 'a' → $in[1] compares with inf"),
        ({"a": 2**63}, "compares with 9223372036854775808, beyond 64-bit integers"),
        ({"a": {"$ne": -(2**63) - 1}}, "beyond 64-bit integers"),
        ({"a": 10**5000}, "compares with an integer of 16,610 bits, beyond 64-bit integers"),
        ({"a": {"$in": 10**5000}}, "takes a list of scalars, not an integer of 16,610 bits"),
        ({10**5000: 1}, "where has a key of type int (an integer of 16,610 bits)"),
        ({"a": {"$eq": {"b": 1}}}, "key 'a' → $eq compares with a dict"),
        ({"a": {"$in": "ab"}}, "key 'a' → $in takes a list of scalars, not str 'ab'"),
        ({"a": {"$nin": ("x",)}}, "$nin takes a list of scalars, not a tuple"),
        ({"a": {"$in": [[1]]}}, "$in[0] compares with a list"),
        ({"a": {"$exists": 1}}, "key 'a' → $exists takes true or false, not int 1"),
        ({"a": {"$exists": "yes"}}, "$exists takes true or false"),
        ({"a": b"x"}, "key 'a' compares with a value of type bytes; compare with a str"),
        ({"a": np.int64(1)}, "compares with a value of type int64; convert it with int"),
        ({"a\x00": 1}, "the key holds a NUL character"),
        ({"a": "x\x00"}, "key 'a': the value holds a NUL character"),
        ({"\ud800": 1}, "the key holds a lone surrogate"),
        ({"a": {"$in": ["\udc00"]}}, "$in[0]: the value holds a lone surrogate"),
        ({"a": "x" * (MAX_METADATA_BYTES + 1)}, "the value is 65,537 bytes, longer than any"),
        ({"$and": []}, "where → $and takes a non-empty list of filters, not an empty list"),
        ({"$or": []}, "where → $or takes a non-empty list"),
        ({"$or": {"a": 1}}, "$or takes a non-empty list of filters, not a dict"),
        ({"$and": [{"a": 1}, "b"]}, "where → $and[1] is str 'b', not a filter"),
        ({"$not": [{"a": 1}]}, "where → $not takes one filter (a dict), not a list"),
        ({"$or": [{"$not": {"a": {"$in": 1}}}]}, "where → $or[0] → $not: key 'a' → $in"),
        (_nested_not(MAX_FILTER_DEPTH), "nests $and/$or/$not deeper than 32 levels"),
        ({f"k{i}": i for i in range(MAX_FILTER_CONDITIONS + 1)}, "more than 1,000 conditions"),
        ({"a": {"$in": list(range(MAX_FILTER_CONDITIONS + 1))}}, "more than 1,000 conditions"),
        ({"$and": [{}] * (MAX_FILTER_CONDITIONS + 1)}, "more than 1,000 conditions"),
    ],
)
def test_malformed_filter_names_the_key_and_the_fix(where: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(message)) as e:
        parse_filter(where)
    assert e.value.fix


def test_filter_limits_are_inclusive() -> None:
    parse_filter(_nested_not(MAX_FILTER_DEPTH - 1))
    parse_filter({f"k{i}": i for i in range(MAX_FILTER_CONDITIONS)})
    parse_filter({"a": {"$nin": list(range(MAX_FILTER_CONDITIONS))}})


def test_cyclic_filter_is_refused_not_recursed() -> None:
    where: dict[str, Any] = {}
    where["$not"] = where
    with pytest.raises(InvalidArgumentError, match="deeper than 32"):
        parse_filter(where)


junk_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=4),
    st.binary(max_size=2),
    st.sampled_from(["$and", "$or", "$not", "$eq", "$in", "$gt", "$exists", "$nin", "\ud800"]),
    st.sampled_from([-(2**63) - 1, 2**63, math.nan, -math.inf, "x" * 70_000]),
    st.integers(0, 2).map(lambda e: 10 ** (5000 + e)),  # no str() of its digits: too many
)
junk = st.recursive(
    junk_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner)
        | st.dictionaries(
            st.one_of(
                st.sampled_from(["$and", "$or", "$not", "$eq", "$in", "$lt", "a", "\x00"]),
                st.integers(-2, 2),
                st.none(),
            ),
            inner,
            max_size=3,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=junk)
def test_only_invalid_argument_escapes(value: object) -> None:
    try:
        f = parse_filter(value)
    except InvalidArgumentError as e:
        assert e.fix
    else:
        to_sqlite(f)
        to_postgres(f)
        matches(f, {})
        assert canonical(parse_filter(json.loads(canonical(f)))) == canonical(f)
    try:
        check_metadata(value, "md#1")
    except InvalidArgumentError as e:
        assert e.fix


# -- the semantics, by example, on every engine ----------------------------------------------

ROWS: list[dict[str, Any]] = [
    {"n": 1, "s": "a", "b": True, "z": None, "l": [1, 2], "o": {"k": 1}},  # 0
    {"n": 2.0, "s": "b", "b": False},  # 1
    {"n": True, "s": "é"},  # 2: a bool is not a number
    {"n": "1", "s": "B"},  # 3: nor is a string
    {},  # 4
    {"n": None, "l": 1},  # 5
    {"n": 2**60, "f": 2.0**60},  # 6: 1152921504606846976 and 1.152921504606847e+18
    {"n": -0.0, "s": ""},  # 7
    {"n": 0.1, "s": "ab"},  # 8
    {"n": [1], "s": ["a"]},  # 9: arrays equal no scalar
    {"$gt": 1, "a.b": 2, 'q"': 3, "e\u0301": 4},  # 10: keys that look like syntax
]
ALL = list(range(len(ROWS)))

EXAMPLES: list[tuple[dict[str, Any], list[int]]] = [
    ({}, ALL),
    ({"$not": {}}, []),
    ({"n": 1}, [0]),
    ({"n": 2}, [1]),
    ({"n": 1.0}, [0]),
    ({"n": True}, [2]),
    ({"b": 0}, []),
    ({"b": False}, [1]),
    ({"n": "1"}, [3]),
    ({"n": None}, [5]),
    ({"z": None}, [0]),
    ({"missing": None}, []),
    ({"n": {"$ne": None}}, [i for i in ALL if i != 5]),
    ({"n": {"$ne": 1}}, [i for i in ALL if i != 0]),
    ({"n": {"$gt": 0}}, [0, 1, 6, 8]),
    ({"n": {"$gte": 0}}, [0, 1, 6, 7, 8]),
    ({"n": {"$lt": 0.1}}, [7]),
    ({"n": {"$lte": 0.1}}, [7, 8]),
    ({"n": {"$gt": 0, "$lt": 2}}, [0, 8]),
    ({"s": {"$gt": "a"}}, [1, 2, 8]),  # code points: "B" and "" sort before "a"
    ({"s": {"$lt": "a"}}, [3, 7]),
    ({"s": {"$gte": "a", "$lt": "b"}}, [0, 8]),
    ({"s": {"$gt": 1}}, []),  # strings and numbers don't compare
    ({"n": {"$lt": "z"}}, [3]),
    ({"s": "A"}, []),
    ({"s": "e\u0301"}, []),  # no normalization: "é" is stored precomposed
    ({"s": {"$in": ["a", "B"]}}, [0, 3]),
    ({"s": {"$in": []}}, []),
    ({"s": {"$nin": []}}, ALL),
    ({"s": {"$nin": ["a"]}}, [i for i in ALL if i != 0]),
    ({"n": {"$in": [1, None]}}, [0, 5]),
    ({"n": {"$in": [True, "1"]}}, [2, 3]),
    ({"l": 1}, [5]),  # row 0's [1, 2] doesn't equal 1
    ({"l": {"$in": [1, 2]}}, [5]),
    ({"o": {"$exists": True}}, [0]),
    ({"z": {"$exists": True}}, [0]),
    ({"z": {"$exists": False}}, [i for i in ALL if i != 0]),
    ({"$not": {"n": {"$gt": 0}}}, [2, 3, 4, 5, 7, 9, 10]),
    ({"$not": {"n": {"$ne": 1}}}, [0]),
    ({"n": 2**60}, [6]),
    ({"f": 2.0**60}, [6]),
    ({"f": 2**60}, []),  # the stored text says 1152921504606847000
    ({"n": 2.0**60}, []),
    ({"f": 2**60 + 1}, []),  # the float nearest to it is 2.0**60, but its text isn't that
    ({"f": {"$gt": 2**60}}, [6]),
    ({"f": {"$gte": 2.0**60}}, [6]),  # PostgreSQL: a float8 parameter would round to 15 digits
    ({"f": {"$lte": 2.0**60}}, [6]),
    ({"n": {"$gt": 1}}, [1, 6]),
    ({"n": {"$lte": 1.0}}, [0, 7, 8]),
    ({"n": 0.5}, []),
    ({"n": {"$gte": 0.5, "$lt": 1.5}}, [0]),
    ({"n": {"$lt": 2.0**60}}, [0, 1, 6, 7, 8]),
    ({"n": 0}, [7]),  # -0.0 equals 0
    ({"n": 0.1}, [8]),
    ({"$or": [{"n": 1}, {"s": "b"}]}, [0, 1]),
    ({"$and": [{"s": {"$gte": "a"}}, {"s": {"$lt": "b"}}]}, [0, 8]),
    ({"$or": [{"n": 1}], "s": "b"}, []),
    ({"$gt": 1}, [10]),  # a top-level key, not an operator
    ({"a.b": 2}, [10]),
    ({'q"': {"$gte": 3}}, [10]),
    ({"e\u0301": 4}, [10]),
]


@pytest.mark.parametrize(("where", "ids"), EXAMPLES, ids=[json.dumps(w) for w, _ in EXAMPLES])
def test_semantics_by_example_on_sqlite(where: dict[str, Any], ids: list[int]) -> None:
    f = parse_filter(where)
    assert expected(f, ROWS) == ids
    assert sqlite_ids(sqlite_table(ROWS), f) == ids


@pytest.mark.postgres
def test_semantics_by_example_on_postgres(pg: psycopg.Connection[Any]) -> None:
    pg_fill(pg, ROWS)
    for where, ids in EXAMPLES:
        assert pg_ids(pg, parse_filter(where)) == ids, where


def test_ne_is_not_eq_and_canonical_is_stable() -> None:
    assert parse_filter({"a": {"$ne": 1}}) == Not(Compare("a", "$eq", Operand("number", 1)))
    assert canonical(parse_filter({"a": {"$ne": 1}})) == canonical(parse_filter({"$not": {"a": 1}}))
    assert canonical(parse_filter({"a": 1, "b": 2})) == canonical(parse_filter({"b": 2, "a": 1}))
    assert canonical(parse_filter({"a": {"$lt": 3, "$gt": 1}})) == (
        '{"$and":[{"a":{"$gt":1}},{"a":{"$lt":3}}]}'
    )
    assert canonical(parse_filter({"a": True})) != canonical(parse_filter({"a": 1}))
    assert parse_filter({"a": True}) != parse_filter({"a": 1})  # Python says True == 1
    assert canonical(parse_filter({})) == "{}"


def big_filters() -> list[tuple[dict[str, Any], list[int]]]:
    """Filters at the limits (1,000 conditions, 32 levels) and the ids they pick of BIG_ROW."""
    ranges = {f"k{i}": {"$gte": i - 0.5} for i in range(MAX_FILTER_CONDITIONS)}
    wide_or = {"$or": [{f"k{i}": {"$gt": i}} for i in range(MAX_FILTER_CONDITIONS)]}
    return [(ranges, []), (wide_or, [0]), (_nested_not(MAX_FILTER_DEPTH - 1), [0])]


BIG_ROW = {"k0": 0, "k999": 999.5}


def test_big_filters_run_on_sqlite() -> None:
    """Balanced AND/OR trees stay under SQLite's expression depth limit (1,000)."""
    conn = sqlite_table([BIG_ROW])
    for where, ids in big_filters():
        f = parse_filter(where)
        assert expected(f, [BIG_ROW]) == ids
        assert sqlite_ids(conn, f) == ids


@pytest.mark.postgres
def test_big_filters_run_on_postgres(pg: psycopg.Connection[Any]) -> None:
    pg_fill(pg, [BIG_ROW])
    for where, ids in big_filters():
        assert pg_ids(pg, parse_filter(where)) == ids


NULL_COLUMN_EXAMPLES: list[tuple[dict[str, Any], list[int]]] = [
    ({"a": 1}, [1]),
    ({"a": {"$ne": 1}}, [0]),
    ({"a": {"$nin": [1]}}, [0]),
    ({"a": {"$exists": False}}, [0]),
    ({"$not": {"a": {"$gt": 0}}}, [0]),
    ({"$not": {"$or": [{"a": 1}, {"b": "x"}]}}, [0]),
    ({}, [0, 1]),
]


def test_a_null_column_matches_as_no_metadata_on_sqlite() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, metadata TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(0, None), (1, '{"a":1}')])
    for where, ids in NULL_COLUMN_EXAMPLES:
        f = parse_filter(where)
        assert expected(f, [load_metadata(None), {"a": 1}]) == ids
        assert sqlite_ids(conn, f) == ids, where


@pytest.mark.postgres
def test_a_null_column_matches_as_no_metadata_on_postgres(pg: psycopg.Connection[Any]) -> None:
    pg.execute("ALTER TABLE t ALTER COLUMN metadata DROP NOT NULL")
    pg.execute("""INSERT INTO t VALUES (0, NULL), (1, '{"a": 1}')""")
    for where, ids in NULL_COLUMN_EXAMPLES:
        assert pg_ids(pg, parse_filter(where)) == ids, where


def test_strings_order_by_code_point_whatever_the_database_collation() -> None:
    """The test server's collation is C.UTF-8, where any order is code point: check the SQL."""
    sql, params = to_postgres(parse_filter({"s": {"$gt": "a"}}))
    assert 'COLLATE "C" > %s::text' in sql and params == ["s", "s", "a"]


# -- the same rows on both engines: properties -----------------------------------------------

KEYS = ["a", "b", "$gt", "a.b", "a[0]", 'q"', "back\\slash", "new\nline", "", "é", "🙂"]
# Values on the engines' edges: bools next to 0 and 1, -0.0, text that sorts by code point,
# ints and floats about 2**53, 2**60 and 2**63 (where the two types part), the float range.
EDGES: list[Any] = [None, True, False, 0, 1, -0.0, 0.5, 0.1, "", "a", "A", "é", "e\u0301", "1"]
EDGES += [2**53, 2**53 + 1, 2.0**53, 2**60, 2**60 + 1, 2.0**60, math.nextafter(2.0**60, 0)]
EDGES += [2**63 - 1, -(2**63), 2.0**63, 1e300, 5e-324, 1.7976931348623157e308, "\uffff", "🙂"]
scalars = st.one_of(
    st.sampled_from(EDGES),
    st.sampled_from(HOSTILE),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=4),
)


def nearby(value: Any) -> list[Any]:
    """`value` and its neighbours: the other number type, the next floats and ints, texts."""
    if isinstance(value, str):
        return [value, value[:-1], value + "a", value + "\x01", value.upper()]
    if isinstance(value, bool):
        return [value, int(value), float(value)]
    if value is None:
        return [None]
    found: list[Any] = [value, float(value), value + 1, value - 1, value + 0.5]
    if isinstance(value, float):
        found += [math.nextafter(value, math.inf), math.nextafter(value, -math.inf)]
        found += [int(value)] if value.is_integer() else [math.floor(value), math.ceil(value)]
    return [
        v for v in found if math.isfinite(v) and (isinstance(v, float) or -(2**63) <= v < 2**63)
    ]


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows and a filter over a few keys and a few values and their neighbours: they meet."""
    names = draw(st.lists(st.sampled_from(KEYS + HOSTILE), min_size=1, max_size=3, unique=True))
    base = draw(st.lists(scalars, min_size=1, max_size=3))
    near = draw(st.lists(st.sampled_from([v for b in base for v in nearby(b)]), max_size=3))
    extra = draw(st.lists(st.sampled_from([None, True, False, 0, 1, "1"]), max_size=2))
    key = st.sampled_from(names)
    value = st.sampled_from(base + near + extra)
    stored = st.one_of(
        *[value] * 5, st.lists(value, max_size=2), st.dictionaries(key, value, max_size=2)
    )
    rows = draw(st.lists(st.dictionaries(key, stored, min_size=1), min_size=2, max_size=8))
    return rows, draw(wheres(key, value))


OPERATORS = ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"]


@st.composite
def operands(draw: st.DrawFn, op: str, value: st.SearchStrategy[Any]) -> Any:
    if op in ("$in", "$nin"):
        return draw(st.lists(value, max_size=3))
    if op == "$exists":
        return draw(st.booleans())
    if op in ("$eq", "$ne"):
        return draw(value)
    return draw(value.filter(lambda v: v is not None and not isinstance(v, bool)))


@st.composite
def compared(draw: st.DrawFn, value: st.SearchStrategy[Any]) -> Any:
    """What a key is compared with: a scalar, or one or two operators (each as likely)."""
    ops = draw(st.lists(st.sampled_from([None, *OPERATORS]), min_size=1, max_size=2, unique=True))
    if None in ops:
        return draw(value)
    return {op: draw(operands(op, value)) for op in ops}


def wheres(key: st.SearchStrategy[str], value: st.SearchStrategy[Any]) -> Any:
    """Filters of every operator, nested in $and/$or/$not, over `key` and `value`."""
    conditions = st.dictionaries(key, compared(value), min_size=1, max_size=2)  # {}: EXAMPLES
    return st.recursive(
        conditions,
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map(lambda fs: {"$and": fs}),
            st.lists(inner, min_size=1, max_size=3).map(lambda fs: {"$or": fs}),
            inner.map(lambda f: {"$not": f}),
            st.tuples(inner, conditions).map(lambda p: {**p[1], "$not": p[0]}),
        ),
        max_leaves=6,
    )


@pytest.mark.parametrize("form", ["paths", "json_each"])
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=cases())
def test_property_sqlite_selects_what_matches_says(
    monkeypatch: pytest.MonkeyPatch, form: str, case: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    rows, where = case
    if form == "json_each":  # every key through json_each: proves the path form equal
        monkeypatch.setattr(filters, "_path", lambda key: None)
    f = parse_filter(where)
    assert canonical(parse_filter(json.loads(canonical(f)))) == canonical(f)
    conn = sqlite_table(rows)
    read_back = [load_metadata(text) for (text,) in conn.execute("SELECT metadata FROM t")]
    for part in parts_of(f):
        assert sqlite_ids(conn, part) == expected(part, rows), canonical(part)
        assert expected(part, read_back) == expected(part, rows)


@pytest.mark.postgres
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=cases())
def test_property_postgres_selects_what_matches_says(
    pg: psycopg.Connection[Any], case: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    rows, where = case
    f = parse_filter(where)
    pg_fill(pg, rows)
    read_back = [load_metadata(m) for (m,) in pg.execute("SELECT metadata FROM t ORDER BY id")]
    for part in parts_of(f):
        assert pg_ids(pg, part) == expected(part, rows), canonical(part)
        assert expected(part, read_back) == expected(part, rows)


# Numbers alone, where the engines differ most: ints and floats next to each other.
numbers = st.one_of(
    st.sampled_from([v for v in EDGES if isinstance(v, int | float) and not isinstance(v, bool)]),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)


@st.composite
def number_cases(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Stored numbers and one comparison, all drawn from a few numbers and their neighbours."""
    base = draw(st.lists(numbers, min_size=1, max_size=3))
    pool = st.sampled_from([v for b in base for v in nearby(b)])
    key = draw(st.sampled_from(["n", 'n"']))  # a path label, and a key only json_each reads
    op = draw(st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"]))
    operand = draw(st.lists(pool, max_size=3) if op in ("$in", "$nin") else pool)
    rows = [{key: v} for v in draw(st.lists(pool, min_size=1, max_size=8))]
    return rows, {key: {op: operand}}


@settings(max_examples=200, deadline=None)
@given(case=number_cases())
def test_property_number_comparisons_are_exact_on_sqlite(
    case: tuple[list[dict[str, Any]], dict[str, Any]],
) -> None:
    rows, where = case
    f = parse_filter(where)
    assert sqlite_ids(sqlite_table(rows), f) == expected(f, rows)


@pytest.mark.postgres
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=number_cases())
def test_property_number_comparisons_are_exact_on_postgres(
    pg: psycopg.Connection[Any], case: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    rows, where = case
    f = parse_filter(where)
    pg_fill(pg, rows)
    assert pg_ids(pg, f) == expected(f, rows)


# -- hostile keys and values -----------------------------------------------------------------


def _hostile_rows() -> list[dict[str, Any]]:
    return [{key: value for key in HOSTILE} for value in HOSTILE]


def _hostile_filter(key: str, value: str) -> Filter:
    either = {"$or": [{key: {"$gte": value}}, {key: {"$in": [value]}}]}
    return parse_filter({"$and": [{key: value}, either, {key: {"$exists": True}}]})


def test_hostile_keys_and_values_are_parameters_on_sqlite() -> None:
    rows = _hostile_rows()
    conn = sqlite_table(rows)
    for i, value in enumerate(HOSTILE):
        for key in HOSTILE:
            f = _hostile_filter(key, value)
            # the SQL text is that of a plain key (a path label, or json_each's key)
            plain = [to_sqlite(_hostile_filter(k, "v"))[0] for k in ("k", 'k"')]
            assert to_sqlite(f)[0] in plain
            assert sqlite_ids(conn, f) == [i] == expected(f, rows)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (len(HOSTILE),)


@pytest.mark.postgres
def test_hostile_keys_and_values_are_parameters_on_postgres(pg: psycopg.Connection[Any]) -> None:
    rows = _hostile_rows()
    pg_fill(pg, rows)
    for i, value in enumerate(HOSTILE):
        for key in HOSTILE:
            f = _hostile_filter(key, value)
            assert to_postgres(f)[0] == to_postgres(_hostile_filter("k", "v"))[0]
            assert pg_ids(pg, f) == [i] == expected(f, rows)
            assert pg_ids(pg, parse_filter({key: {"$exists": True, "$ne": value}})) == [
                j for j in range(len(HOSTILE)) if j != i
            ]
    assert pg.execute("SELECT count(*) FROM t").fetchone() == (len(HOSTILE),)


# -- PostgreSQL: containment and the GIN index -----------------------------------------------


@pytest.mark.postgres
def test_containment_of_a_scalar_is_json_equality(pg: psycopg.Connection[Any]) -> None:
    """A nested array contains no scalar (only a top-level array does), so @> is equality."""
    checks = {
        """'{"k": [1, 2]}'::jsonb @> '{"k": 1}'""": False,
        """'{"k": ["a"]}'::jsonb @> '{"k": "a"}'""": False,
        """'{"k": [null]}'::jsonb @> '{"k": null}'""": False,
        """'{"k": {"a": 1}}'::jsonb @> '{"k": {}}'""": True,  # why operands are scalars only
        """'{"k": 2.0}'::jsonb @> '{"k": 2}'""": True,
        """'{"k": true}'::jsonb @> '{"k": 1}'""": False,
        """'["a"]'::jsonb @> '"a"'""": True,  # the top-level exception, never an object
    }
    for expression, result in checks.items():
        assert pg.execute(f"SELECT {expression}").fetchone() == (result,), expression


@pytest.mark.postgres
def test_equality_uses_the_gin_index(pg: psycopg.Connection[Any]) -> None:
    rows = [
        {"lang": ["en", "de", "fr"][i % 3], "year": 2000 + i % 25, "id": i} for i in range(10_000)
    ]
    with pg.cursor() as cur, cur.copy("COPY t (id, metadata) FROM STDIN") as copy:
        for i, m in enumerate(rows):
            copy.write_row((i, check_metadata(m, f"md#{i}")))
    pg.execute("VACUUM ANALYZE t")  # moves the rows from GIN's pending list into the index
    pg.execute("SET enable_seqscan = off")  # the plan must not depend on the cost estimates
    for where in (
        {"id": 42},
        {"lang": "de", "year": 2003},
        {"id": {"$in": [1, 2, 3]}},
        {"$or": [{"id": 7}, {"year": 1999}]},
        {"id": 42, "year": {"$gte": 2000}},
    ):
        f = parse_filter(where)
        sql, params = to_postgres(f)
        plan = "\n".join(
            row[0] for row in pg.execute(f"EXPLAIN SELECT id FROM t WHERE {sql}", params)
        )
        assert "Bitmap Index Scan on t_metadata_gin" in plan, plan
        assert pg_ids(pg, f) == expected(f, rows)
