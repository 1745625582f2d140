"""Metadata filters: one small language over top-level keys, the same rows on every engine.

`parse_filter` checks a filter once, before any SQL exists; `matches` is the reference
semantics in Python; `to_postgres` and `to_sqlite` render the same semantics as a boolean SQL
expression and its parameters. Keys and values always travel as bound parameters.

The language (the contract; the README copies it):

- A filter is a dict. Several entries must all hold (AND); ``{}`` matches every row.
- ``"$and": [f, ...]`` all hold; ``"$or": [f, ...]`` at least one holds (both lists are
  non-empty); ``"$not": f`` holds exactly where `f` doesn't (rows without the key included).
  Every other key — any other string starting with ``$`` too — names a top-level metadata
  key (so keys named ``$and``, ``$or`` and ``$not`` can't be filtered on).
- A key's value is a scalar (None, bool, int, float, str), meaning ``$eq``, or a dict of
  operators that must all hold:

  - ``$eq v``: the key is present and its value equals `v`. ``$ne v`` is exactly
    NOT ``$eq v``, so it also matches rows without the key (as MongoDB does).
  - ``$gt``, ``$gte``, ``$lt``, ``$lte`` take a number (not a bool) or a str and compare
    numbers with numbers and strings with strings; a stored value of another type (or no
    value) doesn't match.
  - ``$in [v, ...]`` equals one of the scalars (``[]`` matches nothing); ``$nin`` is exactly
    NOT ``$in``.
  - ``$exists true`` the key is present (with any value, null included); ``false`` absent.

- Equality is JSON equality: a key present with JSON null equals None, a missing key equals
  nothing; bools are not numbers (``true`` never equals ``1``); ``2`` equals ``2.0``; strings
  compare exactly (no collation or Unicode normalization). A stored array or object equals
  no scalar (``[1, 2]`` doesn't equal ``1``; there is no "array contains").
- Numbers compare by the exact decimal value their JSON text says: an int as written, a float
  as its shortest repr (what ``json.dumps`` writes and jsonb keeps). Within ±2**53 this is
  Python's own comparison; beyond it, ``2**60`` and ``2.0**60`` (``1.152921504606847e+18``)
  are different numbers, because that is what the stored text says.
- Strings order by code point (Python's order; PostgreSQL ``COLLATE "C"``, SQLite BINARY).

Limits keep the SQL bounded: `MAX_FILTER_CONDITIONS` (each comparison, each ``$in``/``$nin``
value and each ``{}`` counts one) and `MAX_FILTER_DEPTH` levels of ``$and``/``$or``/``$not``.
Ints must fit 64 bits, floats be finite, and text hold no NUL or lone surrogate.

Build filters with `parse_filter` (the nodes are frozen values; ``True`` and ``1`` stay apart)
and cache them by `canonical` text.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal, LiteralString, TypeAlias

from shareddb._core.text import show
from shareddb._vectors.metadata import INT64_MAX, INT64_MIN, MAX_METADATA_BYTES, number_text
from shareddb.errors import InvalidArgumentError

MAX_FILTER_CONDITIONS: Final = 1000
MAX_FILTER_DEPTH: Final = 32

Scalar: TypeAlias = bool | int | float | str | None
Kind: TypeAlias = Literal["null", "bool", "number", "string"]
Comparison: TypeAlias = Literal["$eq", "$gt", "$gte", "$lt", "$lte"]

# The order operators of one key are checked and rendered in.
_OPERATORS: Final = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists")
_RANGES: Final[dict[str, Comparison]] = {"$gt": "$gt", "$gte": "$gte", "$lt": "$lt", "$lte": "$lte"}
_SQL_OPS: Final[dict[str, LiteralString]] = {
    "$eq": "=",
    "$gt": ">",
    "$gte": ">=",
    "$lt": "<",
    "$lte": "<=",
}
_PY_OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "$eq": operator.eq,
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
# Keys SQLite's JSON paths can't address as ``$."key"`` (stored escaped, or ending the label).
_NOT_A_PATH_LABEL = re.compile(r'["\\\x00-\x1f]')
_EXAMPLE: Final = 'e.g. {"lang": "en", "year": {"$gte": 2020}}'


@dataclass(frozen=True, slots=True)
class Operand:
    """A scalar a filter compares with; `kind` keeps True apart from 1 (Python says equal)."""

    kind: Kind
    value: Scalar

    @property
    def number(self) -> Decimal:
        """The exact decimal of a number's JSON text (a float's shortest repr)."""
        assert isinstance(self.value, int | float)
        return _decimal(self.value)


@dataclass(frozen=True, slots=True)
class Compare:
    """The key is present and its value compares with the operand (ranges: same type only)."""

    key: str
    op: Comparison
    operand: Operand


@dataclass(frozen=True, slots=True)
class In:
    """The key is present and its value equals one of the operands (none: never)."""

    key: str
    operands: tuple[Operand, ...]


@dataclass(frozen=True, slots=True)
class Exists:
    """The key is present."""

    key: str


@dataclass(frozen=True, slots=True)
class And:
    """Every part holds; no parts: every row matches."""

    parts: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """At least one part holds."""

    parts: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """The part doesn't hold (a missing key included)."""

    part: Filter


Filter: TypeAlias = Compare | In | Exists | And | Or | Not


# -- parsing ---------------------------------------------------------------------------------


def parse_filter(where: object) -> Filter:
    """`where` checked and as a tree, or InvalidArgumentError naming the key and the fix."""
    if not isinstance(where, dict):
        raise InvalidArgumentError(
            f"where is {_describe(where)}, not a dict", fix=f"pass a dict of conditions, {_EXAMPLE}"
        )
    return _Parser().filter(where, "where", 1)


class _Parser:
    """One parse: counts conditions across the whole filter."""

    def __init__(self) -> None:
        self.conditions = 0

    def count(self, n: int, at: str) -> None:
        self.conditions += n
        if self.conditions > MAX_FILTER_CONDITIONS:
            raise InvalidArgumentError(
                f"{at}: the filter has more than {MAX_FILTER_CONDITIONS:,} conditions",
                fix="use $in for many values of one key, or split the query",
            )

    def filter(self, where: dict[Any, Any], at: str, depth: int) -> Filter:
        if depth > MAX_FILTER_DEPTH:
            raise InvalidArgumentError(
                f"{at}: the filter nests $and/$or/$not deeper than {MAX_FILTER_DEPTH} levels",
                fix="flatten it ($and and $or take many filters in one list)",
            )
        for key in where:
            if not isinstance(key, str):
                raise InvalidArgumentError(
                    f"{at} has a key of type {type(key).__name__} ({_short(key)})",
                    fix="metadata keys are str: write the key as text",
                )
        if not where:
            self.count(1, at)
            return And(())
        parts: list[Filter] = []
        for key, value in sorted(where.items(), key=lambda item: str(item[0])):
            if key in ("$and", "$or"):
                parts.append(self.logical(key, value, at, depth))
            elif key == "$not":
                if not isinstance(value, dict):
                    raise InvalidArgumentError(
                        f"{at} → $not takes one filter (a dict), not {_describe(value)}",
                        fix='write {"$not": {"lang": "en"}}; for several use $not with $or',
                    )
                parts.append(Not(self.filter(value, f"{at} → $not", depth + 1)))
            else:
                parts.extend(self.key(key, value, at))
        return _all(parts)

    def logical(self, op: str, value: object, at: str, depth: int) -> Filter:
        here = f"{at} → {op}"
        if not isinstance(value, list) or not value:
            got = "an empty list" if isinstance(value, list) else _describe(value)
            raise InvalidArgumentError(
                f"{here} takes a non-empty list of filters, not {got}",
                fix=f'write {{"{op}": [{{"lang": "en"}}, {{"year": 2024}}]}}',
            )
        parts: list[Filter] = []
        for position, item in enumerate(value):
            if not isinstance(item, dict):
                raise InvalidArgumentError(
                    f"{here}[{position}] is {_describe(item)}, not a filter (a dict)",
                    fix=f'write {{"{op}": [{{"lang": "en"}}, {{"year": 2024}}]}}',
                )
            parts.append(self.filter(item, f"{here}[{position}]", depth + 1))
        return _all(parts) if op == "$and" else _any(parts)

    def key(self, key: str, value: object, at: str) -> list[Filter]:
        here = f"{at}: key {show(key)}"
        _check_text(key, here, "the key")
        if isinstance(value, list | tuple):
            raise InvalidArgumentError(
                f"{here} is compared with a {type(value).__name__}",
                fix="equality takes a scalar (stored lists equal no scalar); for any of several "
                f'values write {{{_key_json(key)}: {{"$in": [...]}}}}',
            )
        if not isinstance(value, dict):
            self.count(1, here)
            return [Compare(key, "$eq", _operand(value, here))]
        if not value:
            raise InvalidArgumentError(
                f"{here} is compared with an empty dict",
                fix=f'give an operator, e.g. {{{_key_json(key)}: {{"$eq": 1}}}}',
            )
        for op in value:
            if not isinstance(op, str) or not op.startswith("$"):
                raise InvalidArgumentError(
                    f"{here} is compared with a dict holding {_short(op)}, not an operator",
                    fix="filters compare top-level keys with scalars (keys inside objects "
                    f"can't be filtered); operators are {', '.join(_OPERATORS)}",
                )
            if op not in _OPERATORS:
                raise InvalidArgumentError(
                    f"{here} has the unknown operator {show(op)}",
                    fix=f"use one of {', '.join(_OPERATORS)}",
                )
        return [self.operator(key, op, value[op], here) for op in _OPERATORS if op in value]

    def operator(self, key: str, op: str, value: object, at: str) -> Filter:
        here = f"{at} → {op}"
        if op in ("$in", "$nin"):
            if not isinstance(value, list):
                raise InvalidArgumentError(
                    f"{here} takes a list of scalars, not {_describe(value)}",
                    fix=f'write {{{_key_json(key)}: {{"{op}": ["a", "b"]}}}}',
                )
            self.count(max(1, len(value)), here)
            found = In(key, tuple(_operand(item, f"{here}[{i}]") for i, item in enumerate(value)))
            return found if op == "$in" else Not(found)
        self.count(1, here)
        if op == "$exists":
            if not isinstance(value, bool):
                raise InvalidArgumentError(
                    f"{here} takes true or false, not {_describe(value)}",
                    fix=f'write {{{_key_json(key)}: {{"$exists": true}}}}',
                )
            return Exists(key) if value else Not(Exists(key))
        operand = _operand(value, here)
        if op == "$ne":
            return Not(Compare(key, "$eq", operand))
        if op == "$eq":
            return Compare(key, "$eq", operand)
        if operand.kind not in ("number", "string"):
            raise InvalidArgumentError(
                f"{here} takes a number or a str, not {_describe(value)}",
                fix="only numbers and strings have an order: compare others with $eq or $in",
            )
        return Compare(key, _RANGES[op], operand)


def _operand(value: object, at: str) -> Operand:
    """A scalar operand with plain types (a float subclass as a float), or the error."""
    if value is None:
        return Operand("null", None)
    if isinstance(value, bool):
        return Operand("bool", bool(value))
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidArgumentError(
                f"{at} compares with {number_text(value)}, beyond 64-bit integers",
                fix="no stored metadata holds such an integer; compare within ±2**63",
            )
        return Operand("number", int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgumentError(
                f"{at} compares with {float.__repr__(value)}",
                fix="compare with a finite number (JSON has no NaN or infinity)",
            )
        return Operand("number", float(value))
    if isinstance(value, str):
        _check_text(value, at, "the value")
        return Operand("string", str(value))
    if isinstance(value, list | tuple | dict):
        fix = "compare a key with one scalar (str, int, float, bool or None); "
        fix += "stored lists and objects equal no scalar"
    elif type(value).__module__ == "numpy":
        fix = "convert it with int() or float()"
    else:
        fix = "compare with a str, int, float, bool or None"
    raise InvalidArgumentError(f"{at} compares with {_describe(value)}", fix=fix)


def _check_text(text: str, at: str, what: str) -> None:
    if "\x00" in text:
        raise InvalidArgumentError(
            f"{at}: {what} holds a NUL character, which no stored metadata holds",
            fix="remove it",
        )
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"{at}: {what} holds a lone surrogate, which is not valid UTF-8",
            fix="decode the text properly",
        ) from None
    if size > MAX_METADATA_BYTES:
        raise InvalidArgumentError(
            f"{at}: {what} is {size:,} bytes, longer than any stored metadata "
            f"({MAX_METADATA_BYTES:,} bytes)",
            fix="compare with shorter text",
        )


def _all(parts: list[Filter]) -> Filter:
    """The AND of `parts`, flattened; one part is itself."""
    flat = [q for p in parts for q in (p.parts if isinstance(p, And) else (p,))]
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def _any(parts: list[Filter]) -> Filter:
    flat = [q for p in parts for q in (p.parts if isinstance(p, Or) else (p,))]
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


def _describe(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return number_text(value)
    if value is None or isinstance(value, bool | int | float | str):
        return f"{type(value).__name__} {_short(value)}"
    if isinstance(value, list | tuple | dict):
        return f"a {type(value).__name__}"
    return f"a value of type {type(value).__name__}"


def _short(value: object) -> str:
    if isinstance(value, str):
        return show(value)
    if isinstance(value, int | float):
        return number_text(value)
    return "None" if value is None else f"<{type(value).__name__}>"


def _key_json(key: str) -> str:
    """The key as JSON for an example in a message, or a stand-in when it is long."""
    return _json(key) if len(key) <= 40 else '"<key>"'


def _json(value: object) -> str:
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    )


# -- the reference semantics -----------------------------------------------------------------


def matches(f: Filter, metadata: Mapping[str, Any]) -> bool:
    """Whether metadata (as `load_metadata` returns it) matches: what both engines' SQL does."""
    if isinstance(f, Compare):
        return f.key in metadata and _compare(metadata[f.key], f.op, f.operand)
    if isinstance(f, In):
        return f.key in metadata and any(
            _compare(metadata[f.key], "$eq", operand) for operand in f.operands
        )
    if isinstance(f, Exists):
        return f.key in metadata
    if isinstance(f, Not):
        return not matches(f.part, metadata)
    if isinstance(f, And):
        return all(matches(part, metadata) for part in f.parts)
    return any(matches(part, metadata) for part in f.parts)


def _compare(stored: object, op: Comparison, operand: Operand) -> bool:
    if operand.kind == "null":
        return stored is None
    if operand.kind == "bool":
        return isinstance(stored, bool) and stored is operand.value
    if operand.kind == "string":
        return isinstance(stored, str) and _PY_OPS[op](stored, operand.value)
    number = _stored_number(stored)
    return number is not None and _PY_OPS[op](number, operand.number)


def _stored_number(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return _decimal(value)


def _decimal(value: int | float) -> Decimal:
    """A number's exact decimal as JSON writes it (a float's shortest repr; 1e+18 stays 1e+18)."""
    return Decimal(float.__repr__(value)) if isinstance(value, float) else Decimal(value)


# -- canonical text --------------------------------------------------------------------------


def canonical(f: Filter) -> str:
    """A stable text of the filter (a filter itself): equal text, equal rows; for caching."""
    return _json(_document(f))


def _document(f: Filter) -> dict[str, Any]:
    if isinstance(f, Compare):
        return {f.key: {f.op: f.operand.value}}
    if isinstance(f, In):
        return {f.key: {"$in": [operand.value for operand in f.operands]}}
    if isinstance(f, Exists):
        return {f.key: {"$exists": True}}
    if isinstance(f, Not):
        return {"$not": _document(f.part)}
    if isinstance(f, And):
        return {"$and": [_document(part) for part in f.parts]} if f.parts else {}
    return {"$or": [_document(part) for part in f.parts]}


# -- PostgreSQL ------------------------------------------------------------------------------


def indexed(f: Filter) -> bool:
    """Whether PostgreSQL's GIN index on metadata can find the rows `f` keeps.

    Equality and $in are containment (``@>``), which the index serves; an AND needs one
    such part, an OR all of them. Ranges, $exists and $not read every row.
    """
    if isinstance(f, Compare):
        return f.op == "$eq"
    if isinstance(f, In):
        return True
    if isinstance(f, And):
        return any(map(indexed, f.parts))
    if isinstance(f, Or):
        return all(map(indexed, f.parts))
    return False


def to_postgres(f: Filter, column: LiteralString = "metadata") -> tuple[LiteralString, list[Any]]:
    """A boolean expression over a jsonb `column` with ``%s`` placeholders, and its params.

    Equality and $in are containment (``@>``), which a GIN ``jsonb_path_ops`` index serves;
    containment of a scalar at a top-level key is JSON equality (a nested array contains no
    scalar: ``'{"k": [1, 2]}' @> '{"k": 1}'`` is false). Over a NOT NULL column it is never
    NULL; a NULL column matches as ``{}`` would.
    """
    params: list[Any] = []
    return _postgres(f, column, params), params


def _postgres(f: Filter, c: LiteralString, params: list[Any]) -> LiteralString:
    if isinstance(f, Compare):
        operand = f.operand
        if f.op == "$eq":
            params.append(_json({f.key: operand.value}))
            return f"{c} @> %s::jsonb"
        op = _SQL_OPS[f.op]
        if operand.kind == "number":  # never cast a non-number: CASE, as AND may not short-circuit
            params.extend((f.key, f.key, operand.number))
            return (
                f"CASE WHEN jsonb_typeof({c} -> %s::text) = 'number' "
                f"THEN ({c} -> %s::text)::numeric {op} %s::numeric ELSE false END"
            )
        params.extend((f.key, f.key, operand.value))
        return (
            f"CASE WHEN jsonb_typeof({c} -> %s::text) = 'string' "
            f'THEN ({c} ->> %s::text) COLLATE "C" {op} %s::text ELSE false END'
        )
    if isinstance(f, In):
        if not f.operands:
            return "false"
        params.append([_json({f.key: operand.value}) for operand in f.operands])
        return f"{c} @> ANY(%s::jsonb[])"
    if isinstance(f, Exists):
        params.append(f.key)
        return f"{c} ? %s::text"
    if isinstance(f, Not):
        return f"NOT COALESCE({_postgres(f.part, c, params)}, false)"
    parts = [_postgres(part, c, params) for part in f.parts]
    if isinstance(f, And):
        return _join(parts, " AND ", "true")
    return _join(parts, " OR ", "false")


def _join(parts: list[LiteralString], op: LiteralString, empty: LiteralString) -> LiteralString:
    """`parts` joined by `op` as a balanced tree: SQLite caps expression depth at 1,000."""
    if not parts:
        return empty
    if len(parts) == 1:
        return parts[0]
    middle = len(parts) // 2
    return f"({_join(parts[:middle], op, empty)}{op}{_join(parts[middle:], op, empty)})"


# -- SQLite ----------------------------------------------------------------------------------

# A test of one JSON type (json_each's `type`, json_type()'s result): None when every value of
# the type passes, else SQL over ``{v}`` (the value) with its parameters.
_Branch: TypeAlias = tuple[LiteralString, LiteralString | None, list[Any]]


def to_sqlite(f: Filter, column: LiteralString = "metadata") -> tuple[LiteralString, list[Any]]:
    """A boolean expression over a JSON text `column` with ``?`` placeholders, and its params.

    A key that a JSON path can label (no ``"``, ``\\`` or control character, which the
    stored text escapes) reads through ``json_type``/``json_extract``, whose parse SQLite
    caches across one row's calls; any other key scans ``json_each``. Never NULL.
    Integers and reals are tested apart, each against a bound computed here, so that the
    comparison is the exact decimal one that `matches` makes.
    """
    params: list[Any] = []
    return _sqlite(f, column, params), params


def _sqlite(f: Filter, c: LiteralString, params: list[Any]) -> LiteralString:
    if isinstance(f, Compare):
        return _sqlite_key(f.key, _compare_branches(f.op, f.operand), c, params)
    if isinstance(f, In):
        return _sqlite_key(f.key, _in_branches(f.operands), c, params)
    if isinstance(f, Exists):
        path = _path(f.key)
        if path is None:
            params.append(f.key)
            return f"EXISTS (SELECT 1 FROM json_each({c}) WHERE key = ?)"
        params.append(path)
        return f"json_type({c}, ?) IS NOT NULL"
    if isinstance(f, Not):
        return f"NOT ({_sqlite(f.part, c, params)})"
    parts = [_sqlite(part, c, params) for part in f.parts]
    if isinstance(f, And):
        return _join(parts, " AND ", "1")
    return _join(parts, " OR ", "0")


def _sqlite_key(
    key: str, branches: list[_Branch], c: LiteralString, params: list[Any]
) -> LiteralString:
    """``CASE`` over the key's JSON type, reading the key by path or by json_each."""
    if not branches:
        return "0"
    path = _path(key)
    value: LiteralString = "value" if path is None else f"json_extract({c}, ?)"
    whens: list[LiteralString] = []
    params.append(key if path is None else path)
    for json_type, test, values in branches:
        if test is None:
            whens.append(f"WHEN '{json_type}' THEN 1")
            continue
        if path is not None:
            params.append(path)
        params.extend(values)
        whens.append(f"WHEN '{json_type}' THEN " + test.format(v=value))
    cases = " ".join(whens)
    if path is None:
        return (
            f"EXISTS (SELECT 1 FROM json_each({c}) WHERE key = ? AND CASE type {cases} ELSE 0 END)"
        )
    return f"CASE json_type({c}, ?) {cases} ELSE 0 END"


def _path(key: str) -> str | None:
    """``$."key"``, or None when SQLite's path syntax can't label the key as stored."""
    return None if _NOT_A_PATH_LABEL.search(key) else f'$."{key}"'


def _compare_branches(op: Comparison, operand: Operand) -> list[_Branch]:
    if operand.kind == "null":
        return [("null", None, [])]
    if operand.kind == "bool":
        return [("true" if operand.value else "false", None, [])]
    if operand.kind == "string":
        return [("text", "{v} " + _SQL_OPS[op] + " ?", [operand.value])]
    branches: list[_Branch] = []
    for json_type, bound in (
        ("integer", _integer_bound(op, operand.number)),
        ("real", _real_bound(op, operand.number)),
    ):
        if bound is True:
            branches.append((json_type, None, []))
        elif bound is not False:
            branches.append((json_type, "{v} " + bound[0] + " ?", [bound[1]]))
    return branches


def _in_branches(operands: tuple[Operand, ...]) -> list[_Branch]:
    constants: dict[LiteralString, None] = {}
    texts: dict[str, None] = {}
    integers: dict[int, None] = {}
    reals: dict[float, None] = {}
    for operand in operands:
        if operand.kind == "null":
            constants["null"] = None
        elif operand.kind == "bool":
            constants["true" if operand.value else "false"] = None
        elif operand.kind == "string":
            assert isinstance(operand.value, str)
            texts[operand.value] = None
        else:
            integer = _integer_bound("$eq", operand.number)
            real = _real_bound("$eq", operand.number)
            if not isinstance(integer, bool):
                integers[int(integer[1])] = None
            if not isinstance(real, bool):
                reals[float(real[1])] = None
    branches: list[_Branch] = [(json_type, None, []) for json_type in constants]
    for json_type, values in (("text", texts), ("integer", integers), ("real", reals)):
        if values:
            marks = ", ".join(["?"] * len(values))
            branches.append((json_type, "{v} IN (" + marks + ")", list(values)))
    return branches


_Bound: TypeAlias = tuple[LiteralString, int | float] | bool  # True: all pass; False: none


def _integer_bound(op: Comparison, d: Decimal) -> _Bound:
    """The test of a 64-bit integer against the decimal `d`, as a test against an integer."""
    if op == "$eq":
        return ("=", int(d)) if math.floor(d) == d and INT64_MIN <= d <= INT64_MAX else False
    if op == "$gt":
        return _at_least(math.floor(d) + 1)
    if op == "$gte":
        return _at_least(math.ceil(d))
    if op == "$lt":
        return _at_most(math.ceil(d) - 1)
    return _at_most(math.floor(d))


def _at_least(bound: int) -> _Bound:
    return True if bound <= INT64_MIN else False if bound > INT64_MAX else (">=", bound)


def _at_most(bound: int) -> _Bound:
    return True if bound >= INT64_MAX else False if bound < INT64_MIN else ("<=", bound)


def _real_bound(op: Comparison, d: Decimal) -> _Bound:
    """The test of a float's decimal (its shortest repr) against `d`, as a float test.

    The decimal of a float's repr grows with the float (it lies within half a step of it),
    so ``decimal(y) > d`` is ``y >= u`` for the least float `u` whose decimal is above `d`.
    """
    if op == "$eq":
        nearest = float(d)
        return ("=", nearest) if _decimal(nearest) == d else False
    least = _least_float(d, strict=op in ("$gt", "$lte"))
    if op in ("$gt", "$gte"):
        return False if math.isinf(least) else (">=", least)
    return True if math.isinf(least) else ("<", least)


def _least_float(d: Decimal, *, strict: bool) -> float:
    """The least float whose decimal is above `d` (`strict`) or at least `d`; inf if none.

    It is the float nearest to `d` or one above it: the float below the nearest one lies
    farther from `d`, and so does its shortest repr (which rounds back to it).
    """

    def reaches(y: float) -> bool:
        value = Decimal(float.__repr__(y))  # Decimal("inf") past the largest float
        return value > d if strict else value >= d

    y = float(d)
    while not reaches(y):
        y = math.nextafter(y, math.inf)
    return y
