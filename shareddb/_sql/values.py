"""Parameter values: checked the same way on both engines, then put in each engine's form.

Every value is checked before anything runs, so a value one engine would refuse
(or store differently) is refused on both with the parameter's name:

=================  ===============================  ====================================
Python             PostgreSQL receives              SQLite stores
=================  ===============================  ====================================
None, bool, int    the same (int: 64-bit)           the same (bool as 1 / 0)
float              the same (not NaN)               the same (SQLite turns NaN to NULL)
str                the same (no NUL)                the same
bytes              bytea                            BLOB
datetime (aware)   timestamptz, in UTC              ISO text, UTC, with microseconds
date               date                             ISO text ``YYYY-MM-DD``
Decimal (finite)   numeric                          its text (a NUMERIC column keeps
                                                    15 significant digits)
dict, list         jsonb                            JSON text
numpy 1-D array    vector (pgvector), as float32    little-endian float32 BLOB
=================  ===============================  ====================================

Subclasses count as their base type (an IntEnum is its int value, a StrEnum its text)
and numpy scalars as the Python number they hold. Anything else is refused.

Reading back, PostgreSQL's types come back as psycopg loads them. SQLite has only
its storage classes, so `decoder_for` turns a column's declared type into the
conversion back (see `shareddb._sql.sqlite`); a value that doesn't convert comes back as stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Final, Literal, TypeAlias

import numpy as np
from psycopg.types.json import Jsonb

from shareddb._core.text import check_stored_text
from shareddb._sql.lexer import Parsed
from shareddb._vectors.codec import from_blob, to_blob
from shareddb._vectors.validation import as_embedding
from shareddb.errors import InvalidArgumentError

# One value's check and conversion: (parameter name, value) -> what the driver gets.
Encode: TypeAlias = Callable[[str, Any], Any]
Encoders: TypeAlias = dict[type, Encode]
# A stored SQLite value -> the Python value (None never reaches a decoder).
Decode: TypeAlias = Callable[[Any], Any]

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_TYPES_NAMED: Final = (
    "None, bool, int, float, str, bytes, an aware datetime, date, Decimal, dict or list "
    "(JSON), or a 1-D numpy array (a vector)"
)


# -- the checks both engines share ---------------------------------------------------------


def _as_is(name: str, value: Any) -> Any:
    return value


def _int(name: str, value: int) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise InvalidArgumentError(
            f"parameter :{name} = {value} is outside the 64-bit integer range both engines store",
            fix="pass a Decimal for a NUMERIC column",
        )
    return value


def _float(name: str, value: float) -> float:
    if value != value:
        raise InvalidArgumentError(
            f"parameter :{name} is NaN, which SQLite stores as NULL",
            fix="pass None for a missing number",
        )
    return value


def _str(name: str, value: str) -> str:
    if not value.isascii() or "\x00" in value:
        check_stored_text(f"parameter :{name}", value, InvalidArgumentError, indexed=False)
    return value


def _aware(name: str, value: datetime) -> datetime:
    if value.utcoffset() is None:
        raise InvalidArgumentError(
            f"parameter :{name} = {value.isoformat()} is a naive datetime (no time zone), "
            "so the moment it names is unknown",
            fix="attach the zone: value.replace(tzinfo=UTC) or value.astimezone()",
        )
    return value.astimezone(UTC)


def _decimal(name: str, value: Decimal) -> Decimal:
    if not value.is_finite():
        raise InvalidArgumentError(
            f"parameter :{name} is Decimal({str(value)!r}); both engines store finite decimals",
            fix="pass None for a missing number",
        )
    return value


def json_text(name: str, value: dict[Any, Any] | list[Any]) -> str:
    """`value` as JSON text, or InvalidArgumentError for what JSON (or jsonb) can't hold."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(
            f"parameter :{name} is not JSON-serialisable ({e})",
            fix="use only dict, list, str, int, float (finite), bool and None inside it",
        ) from None
    if "\\u0000" in text and _has_nul(value):
        raise InvalidArgumentError(
            f"parameter :{name} holds a NUL character in its JSON, which jsonb can't store",
            fix="remove the NUL characters",
        )
    return text


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def _vector(name: str, value: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return as_embedding(value, what=f"parameter :{name}")


# -- per engine ----------------------------------------------------------------------------


def _jsonb(name: str, value: dict[Any, Any] | list[Any]) -> Jsonb:
    return Jsonb(json_text(name, value), dumps=_text_as_is)


def _text_as_is(text: str) -> str:
    return text


POSTGRES_ENCODERS: Final[Encoders] = {
    type(None): _as_is,
    bool: _as_is,
    int: _int,
    float: _float,
    str: _str,
    bytes: _as_is,
    bytearray: _as_is,
    memoryview: _as_is,
    datetime: _aware,
    date: _as_is,
    Decimal: _decimal,
    dict: _jsonb,
    list: _jsonb,
    np.ndarray: _vector,
}


def _iso_datetime(name: str, value: datetime) -> str:
    # Fixed width ('2025-01-31T09:30:00.000000+00:00'), so text order is time order.
    return _aware(name, value).isoformat(timespec="microseconds")


SQLITE_ENCODERS: Final[Encoders] = {
    **POSTGRES_ENCODERS,
    datetime: _iso_datetime,
    date: lambda name, value: value.isoformat(),
    Decimal: lambda name, value: str(_decimal(name, value)),
    dict: json_text,
    list: json_text,
    np.ndarray: lambda name, value: to_blob(_vector(name, value)),
}

# Subclasses, most specific first, with the conversion to the base type (an Enum's own
# form would differ between drivers: psycopg dumps an Enum by its member's name).
_BASES: Final[tuple[tuple[type, Callable[[Any], Any]], ...]] = (
    (int, int),
    (float, float),
    (str, str.__str__),
    (bytes, bytes),
    (datetime, lambda v: v),
    (date, lambda v: v),
    (Decimal, lambda v: v),
    (dict, lambda v: v),
    (list, lambda v: v),
    (np.ndarray, lambda v: v),
)


def encode(name: str, value: Any, encoders: Encoders) -> Any:
    """`value` checked and in the form `encoders` give it (InvalidArgumentError if refused)."""
    convert = encoders.get(type(value))
    if convert is not None:
        return convert(name, value)
    if isinstance(value, np.generic) and not isinstance(value, np.datetime64 | np.timedelta64):
        return encode(name, value.item(), encoders)
    for base, to_base in _BASES:
        if isinstance(value, base):
            return encoders[base](name, to_base(value))
    hint = " (a tuple is not JSON here: pass a list)" if isinstance(value, tuple) else ""
    raise InvalidArgumentError(
        f"parameter :{name} is a {type(value).__name__}{hint}, which shareddb's portable "
        f"statements don't take",
        fix=f"pass {_TYPES_NAMED}; db.connection() runs engine-specific SQL with any value "
        "the driver takes",
    )


def bind(
    parsed: Parsed, params: object, encoders: Encoders, row: int | None = None
) -> dict[str, Any]:
    """The values for `parsed`'s placeholders, checked and converted; `row` for executemany."""
    where = "" if row is None else f"seq_of_params[{row}]: "
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        if isinstance(params, list | tuple):
            raise InvalidArgumentError(
                f"{where}params is a {type(params).__name__}; positional parameters are not "
                "supported",
                fix="write :name placeholders in the SQL and pass a dict {'name': value}",
            )
        raise InvalidArgumentError(
            f"{where}params must be a dict of placeholder names to values, not "
            f"{type(params).__name__}",
            fix="pass {'name': value} for each :name in the SQL",
        )
    names = parsed.names
    if len(params) != len(names) or not all(n in params for n in names):
        _mismatch(names, params, where)
    return {n: encode(n, params[n], encoders) for n in names}


def _mismatch(names: tuple[str, ...], params: Mapping[Any, Any], where: str) -> None:
    missing = [f":{n}" for n in names if n not in params]
    extra = [k for k in params if k not in names]
    problems = []
    if missing:
        problems.append(f"the SQL has {', '.join(missing)} with no value in params")
    if extra:
        problems.append(
            f"params has {', '.join(map(repr, extra))} with no matching :name in the SQL"
        )
    raise InvalidArgumentError(
        where + " and ".join(problems) + "; nothing was run",
        fix="pass exactly one value for each :name in the SQL",
    )


# -- reading SQLite values back ------------------------------------------------------------


def _timestamp(value: Any) -> Any:
    if isinstance(value, str):
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:  # SQLite's own CURRENT_TIMESTAMP: UTC without an offset
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    return value


def _date(value: Any) -> Any:
    return date.fromisoformat(value) if isinstance(value, str) else value


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _numeric(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))  # the shortest text that is this float: '0.1', not 0.1000…
    if isinstance(value, int | str):
        return Decimal(value)
    return value


def _boolean(value: Any) -> Any:
    return bool(value) if isinstance(value, int) else value


def _vector_blob(value: Any) -> Any:
    return from_blob(value) if isinstance(value, bytes) and len(value) % 4 == 0 else value


# What a value in a SQLite column is, by the column's declared type name (modifiers
# dropped, upper case). The one such table: db.query decodes by it, and ``shareddb copy``
# takes a SQLite column's kind from it (other names: SQLite's affinity). SQLite has no
# zone-less time type, and CURRENT_TIMESTAMP writes UTC: every timestamp name is UTC.
SqliteKind: TypeAlias = Literal["timestamptz", "date", "json", "numeric", "bool", "vector", "bytes"]
SQLITE_TYPES: Final[dict[str, SqliteKind]] = {
    "TIMESTAMPTZ": "timestamptz",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
    "TIMESTAMP": "timestamptz",
    "DATETIME": "timestamptz",
    "DATE": "date",
    "JSON": "json",
    "JSONB": "json",
    "NUMERIC": "numeric",
    "DECIMAL": "numeric",
    "BOOLEAN": "bool",
    "BOOL": "bool",
    "VECTOR": "vector",
    "F32_BLOB": "vector",
    "FLOAT32": "vector",
    "BYTEA": "bytes",
}
_DECODE_KIND: Final[dict[SqliteKind, Decode]] = {
    "timestamptz": _timestamp,
    "date": _date,
    "json": _json,
    "numeric": _numeric,
    "bool": _boolean,
    "vector": _vector_blob,
}
# Declared column types of the portable table layout, and how a value comes back.
DECODERS: Final[dict[str, Decode]] = {
    name: _DECODE_KIND[kind] for name, kind in SQLITE_TYPES.items() if kind in _DECODE_KIND
}
_MODIFIERS = re.compile(r"\(.*", re.DOTALL)  # NUMERIC(10,2) -> NUMERIC, VECTOR(384) -> VECTOR


def sqlite_type(declared: str) -> SqliteKind | None:
    """The kind a SQLite column declared `declared` holds (None: no name of `SQLITE_TYPES`)."""
    return SQLITE_TYPES.get(" ".join(_MODIFIERS.sub("", declared).split()).upper())


def read_sqlite_time(value: Any) -> Any:
    """A SQLite timestamp as db.query reads it: ISO text to UTC, no offset meaning UTC."""
    return _timestamp(value)


def decoder_for(declared: str) -> Decode | None:
    """The conversion back for a column declared `declared` (None: the value as stored)."""
    kind = sqlite_type(declared) if declared else None
    return None if kind is None else _DECODE_KIND.get(kind)
