"""The values ``shareddb copy`` moves, in the one form both engines' rows are compared in.

A copy reads a row on one engine, compares it with the destination's row of the same
key and writes what differs, so every value has three forms: as the source's driver
reads it, the *common* form (compared), and the destination driver's parameter.
The destination column's `Kind` decides the common form; only JSON needs to know
the source's too: a PostgreSQL json/jsonb column is read as its text (`::text`, so
that a JSON ``null`` is not SQL's NULL, as psycopg's decoding would make it) and
parsed here, SQLite's JSON text is parsed as any text is.

======================  ==============================  ====================================
kind (destination)      common form                     written as (PostgreSQL / SQLite)
======================  ==============================  ====================================
json                    `Json` (equal as JSON values)   canonical JSON text (to json, jsonb)
timestamptz             aware UTC datetime              timestamptz / ISO text, microseconds
timestamp               naive datetime                  timestamp (PostgreSQL only)
date                    date                            date / ISO text
bytes                   bytes                           bytea / blob
vector                  float32 little-endian bytes     vector / blob
bool                    bool                            boolean / 0 or 1
int, real, real4        int, float (real4: float32)     the number
numeric                 Decimal (equal by value; to     numeric / text (SQLite's NUMERIC
                        SQLite: as it keeps it)         affinity keeps 15 digits)
text                    str                             text
other                   the value (compared as text)    the value as read / text
======================  ==============================  ====================================

A value that has no place in its destination column (text that is not JSON in a
JSON column, a datetime without a time zone, 2 in a boolean) raises `BadValue`;
ISO text without an offset in a timestamptz column is UTC (SQLite's CURRENT_TIMESTAMP
writes it so, and db.query reads it so);
the caller names the table, row and column.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

import numpy as np
from pgvector import Vector
from psycopg.types.json import Jsonb

from shareddb._core.types import EngineKind
from shareddb._engines.base import Engine
from shareddb._sql.values import read_sqlite_time
from shareddb._vectors.codec import from_blob, to_blob
from shareddb.errors import ShareddbError

Kind = Literal[
    "json",
    "timestamptz",
    "timestamp",
    "date",
    "bytes",
    "vector",
    "bool",
    "int",
    "real",
    "real4",
    "numeric",
    "text",
    "other",
]


class BadValue(ValueError):
    """A value that can't go into its destination column; the message says why."""


class Json:
    """A JSON value in the common form: the canonical text to write, compared as a value.

    Canonical (sorted keys, no spaces): the text `VectorStorage` itself stores. Two
    values are equal when they are the same JSON value, whichever engine read them:
    jsonb keeps a number's value but not its spelling (``-0.0`` reads back as ``0.0``,
    ``1e18`` as ``1000000000000000000``), and such a row must not count as changed on
    every copy.
    """

    __slots__ = ("key", "text")

    def __init__(self, text: str, value: object) -> None:
        self.text = text
        self.key = json_key(value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Json) and self.key == other.key

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Json({self.text!r})"


def json_key(value: object) -> object:
    """`value` (as json.loads makes it) in a form whose == is JSON-value equality.

    Numbers compare by value (Python compares int and float exactly; 1 == 1.0 is one
    JSON number), bools and null apart from numbers, objects whatever their key order.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, list):
        return ("array", tuple(json_key(v) for v in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((str(k), json_key(v)) for k, v in value.items())))
    return ("other", repr(value))


def canonical_json(value: object) -> Json:
    """`value` (a decoded JSON value) as `Json`; BadValue for what JSON can't hold."""
    try:
        text = json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
        )
    except (TypeError, ValueError) as e:
        raise BadValue(f"{_show(value)} is not a JSON value ({e})") from None
    return Json(text, value)


def driver_forms(
    engine: Engine[Any],
) -> tuple[Callable[[Any], Any], Callable[[bytes], Any], Callable[[str], Any]]:
    """How `engine`'s driver carries values exactly: (a cursor to read, a blob's parameter,
    a JSON text's parameter).

    PostgreSQL: binary results (a vector arrives as pgvector's float32 `Vector`, not as
    decimal text), a float32 array, which the connection's vector dumper sends in
    pgvector's binary form (`to_pgvector`), and the JSON text as a jsonb parameter;
    SQLite: the stored blob and the JSON text as they are. The one place the copy asks
    which engine it has: the Dialect is SQL, and this is the driver.
    """
    if engine.kind == "postgres":
        return (lambda conn: conn.cursor(binary=True)), from_blob, jsonb
    return (lambda conn: conn.cursor()), bytes, str


def jsonb(text: str) -> Jsonb:
    """Canonical JSON text as a jsonb parameter, sent as it is (not encoded again)."""
    return Jsonb(text, dumps=_as_is)


def _as_is(text: Any) -> str:
    return str(text)


def read_time(engine: Engine[Any], value: Any) -> datetime:
    """`engine.read_time(value)`, refusing a value without a time zone (it would move)."""
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    except ValueError:
        parsed = None
    if not isinstance(parsed, datetime) or parsed.utcoffset() is None:
        raise ShareddbError(
            f"timestamp {value!r} is not an aware datetime or ISO-8601 text with a time zone",
            fix="fix the row in the source database",
        )
    return engine.read_time(value)


# -- application tables: one column's conversions --------------------------------------------


class Column:
    """One copied column: the source's value into the common form, that into a parameter.

    `kind` and `dimension` are the destination's; `decoded` says the source's value
    is a JSON value, given as its text (a json/jsonb column read as text on
    PostgreSQL: `Catalog.reads`), `dest_decoded` the same of the destination's.
    """

    __slots__ = ("decoded", "dest", "dest_decoded", "dimension", "kind", "same_engine")

    def __init__(
        self,
        kind: Kind,
        dimension: int | None,
        *,
        source: tuple[EngineKind, Kind],
        dest: EngineKind,
    ) -> None:
        self.kind = kind
        self.dimension = dimension
        self.dest = dest
        self.decoded = source == ("postgres", "json")
        self.dest_decoded = dest == "postgres" and kind == "json"
        self.same_engine = source[0] == dest

    def common(self, value: Any) -> Any:
        """A source value in the common form (BadValue when it has no place here)."""
        if value is None:
            return None
        if self.decoded:
            value = _json_value(value)
        return _COMMON[self.kind](self, value, self.decoded)

    def existing(self, value: Any) -> Any:
        """A destination value (as its driver reads it) in the common form."""
        if value is None:
            return None
        if self.dest_decoded:
            value = _json_value(value)
        return _COMMON[self.kind](self, value, self.dest_decoded)

    def param(self, common: Any, original: Any) -> Any:
        """The destination driver's parameter for a value in the common form."""
        if common is None:
            return None
        pg = self.dest == "postgres"
        match self.kind:
            case "json":
                return common.text  # an untyped parameter: PostgreSQL reads it as json or jsonb
            case "timestamptz":
                return common if pg else common.isoformat(timespec="microseconds")
            case "date":
                return common if pg else common.isoformat()
            case "vector":
                return from_blob(common) if pg else common
            case "bool":
                return common if pg else int(common)
            case "numeric":
                return common if pg else str(common)
            case "other":
                return original if pg and self.same_engine else common
            case _:
                return common


def same_values(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Rows in the common form are equal (a NaN equals a NaN: else it is copied every run)."""
    return all(x == y or (_is_nan(x) and _is_nan(y)) for x, y in zip(a, b, strict=True))


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}...{text[-10:]}"


def _json(col: Column, value: Any, decoded: bool) -> Json:
    if decoded or isinstance(value, dict | list | bool | int | float):
        return canonical_json(value)
    if isinstance(value, Decimal):  # a number from a numeric column
        return canonical_json(int(value) if value == value.to_integral_value() else float(value))
    if isinstance(value, bytes | memoryview):
        value = bytes(value).decode("utf-8", "replace")
    if not isinstance(value, str):
        raise BadValue(f"{_show(value)} ({type(value).__name__}) is not JSON text")
    try:
        return canonical_json(json.loads(value, parse_constant=_no_constant))
    except ValueError as e:
        raise BadValue(f"{_show(value)} is not JSON text ({e})") from None


def _json_value(value: Any) -> Any:
    """A PostgreSQL JSON column's text as its JSON value (``'null'`` -> None: JSON's null)."""
    if not isinstance(value, str):
        return value  # already decoded
    try:
        return json.loads(value, parse_constant=_no_constant)
    except ValueError as e:
        raise BadValue(f"{_show(value)} is not JSON text ({e})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _timestamptz(col: Column, value: Any, decoded: bool) -> datetime:
    if isinstance(value, str):  # SQLite's text: no offset means UTC, as db.query reads it
        with contextlib.suppress(ValueError):  # not ISO text: _datetime says so
            value = read_sqlite_time(value)
    parsed = _datetime(value)
    if parsed.utcoffset() is None:
        raise BadValue(
            f"timestamp {_show(value)} has no time zone, and the column holds times with one"
        )
    return parsed.astimezone(UTC)


def _timestamp(col: Column, value: Any, decoded: bool) -> datetime:
    parsed = _datetime(value)
    if parsed.utcoffset() is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def _datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise BadValue(f"{_show(value)} is not a timestamp (a datetime or ISO-8601 text)")


def _date(col: Column, value: Any, decoded: bool) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise BadValue(f"{_show(value)} is not a date (a date or ISO-8601 text YYYY-MM-DD)")


def _bytes(col: Column, value: Any, decoded: bool) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Vector | np.ndarray):
        return _vector(col, value, decoded)
    raise BadValue(f"{_show(value)} ({type(value).__name__}) is not bytes")


def _vector(col: Column, value: Any, decoded: bool) -> bytes:
    """float32 little-endian bytes: a blob (its size checked), a pgvector Vector or an array."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if len(data) % 4:
            raise BadValue(f"a blob of {len(data)} bytes is not float32 values (4 bytes each)")
    elif isinstance(value, Vector | np.ndarray | list):
        array = value.to_numpy() if isinstance(value, Vector) else np.asarray(value)
        if array.ndim != 1:
            raise BadValue(f"an array of shape {array.shape} is not a vector")
        data = to_blob(array)
    else:
        raise BadValue(f"{_show(value)} ({type(value).__name__}) is not a vector")
    if col.dimension is not None and len(data) != 4 * col.dimension:
        raise BadValue(
            f"a vector of {len(data) // 4} values does not fit the column's "
            f"dimension {col.dimension}"
        )
    return data


def _bool(col: Column, value: Any, decoded: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise BadValue(f"{_show(value)} is not a boolean (true/false, or 0/1)")


def _int(col: Column, value: Any, decoded: bool) -> int:
    try:
        number = Decimal(value) if isinstance(value, str) else value
        if isinstance(number, int):
            return int(number)
        if isinstance(number, float | Decimal) and number == int(number):
            return int(number)
    except (ValueError, ArithmeticError):
        pass
    raise BadValue(f"{_show(value)} is not an integer")


def _real(col: Column, value: Any, decoded: bool) -> float:
    if isinstance(value, int | float | Decimal | str):
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            return float(np.float32(number)) if col.kind == "real4" else number
    raise BadValue(f"{_show(value)} is not a number")


def _numeric(col: Column, value: Any, decoded: bool) -> Decimal:
    number = _decimal(value)
    return _as_sqlite_stores(number) if col.dest == "sqlite" else number


_INT64: Final = range(-(2**63), 2**63)


def _as_sqlite_stores(number: Decimal) -> Decimal:
    """`number` as a SQLite NUMERIC column keeps it: an integer in 64 bits exactly, any
    other number as a float (15 significant digits). Compared in this form, a longer
    numeric from PostgreSQL is not copied again on every run."""
    if number == number.to_integral_value() and int(number) in _INT64:
        return Decimal(int(number))
    as_float = float(number)
    if not math.isfinite(as_float):
        raise BadValue(f"{number} is beyond what SQLite's NUMERIC (a float) holds")
    return Decimal(repr(as_float))


def _decimal(value: Any) -> Decimal:
    try:
        if isinstance(value, Decimal):
            return value
        if isinstance(value, int):
            return Decimal(int(value))
        if isinstance(value, float):
            return Decimal(repr(value))
        if isinstance(value, str):
            return Decimal(value.strip())
    except InvalidOperation:
        pass
    raise BadValue(f"{_show(value)} is not a number")


def _text(col: Column, value: Any, decoded: bool) -> Any:
    if decoded or isinstance(value, dict | list):
        return canonical_json(value).text
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        if value.utcoffset() is not None:
            return value.astimezone(UTC).isoformat(timespec="microseconds")
        return value.isoformat(timespec="microseconds")
    if isinstance(value, bytes | bytearray | memoryview):
        if col.dest == "sqlite":
            return bytes(value)  # SQLite keeps a blob in a text column as it is
        raise BadValue(f"{_show(value)} is bytes, and the column holds text")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _other(col: Column, value: Any, decoded: bool) -> Any:
    if isinstance(value, str | int | float | bytes):
        return value
    if isinstance(value, dict | list):
        return canonical_json(value).text
    return str(value)


_COMMON: dict[Kind, Callable[[Column, Any, bool], Any]] = {
    "json": _json,
    "timestamptz": _timestamptz,
    "timestamp": _timestamp,
    "date": _date,
    "bytes": _bytes,
    "vector": _vector,
    "bool": _bool,
    "int": _int,
    "real": _real,
    "real4": _real,
    "numeric": _numeric,
    "text": _text,
    "other": _other,
}
