"""An embedding's metadata: one JSON object, checked once and stored as canonical text.

Both engines store the same text (jsonb on PostgreSQL, JSON text on SQLite), so a value
is accepted only if both hold it exactly and read it back the same:

- a ``dict`` with ``str`` keys at every level, nested at most `MAX_METADATA_DEPTH` deep,
  at most `MAX_METADATA_BYTES` as JSON (UTF-8);
- values are JSON values: None, bool, int, float, str, list, dict. A tuple is stored as a
  list (and reads back as one). Subclasses of int, float, str, list and dict (IntEnum,
  StrEnum, numpy.float64, OrderedDict) are stored as their plain value; other types —
  bytes, sets, datetimes, Decimal, numpy integers and float32 — are refused with the
  conversion to make, never guessed;
- floats are finite (JSON has no NaN or infinity); ints fit 64 bits (SQLite's JSON holds
  no larger integer exactly);
- text (keys and strings) holds no NUL (jsonb can't) and no lone surrogate (not UTF-8).
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from shareddb._core.text import show
from shareddb.errors import InvalidArgumentError

MAX_METADATA_BYTES: Final = 64 * 1024  # the JSON text, UTF-8
MAX_METADATA_DEPTH: Final = 32  # containers nested, the metadata object included
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

_Path = tuple[object, ...]  # keys (str or, when refused, anything) and list positions


class _Position(int):
    """A list position in a path, told apart from a (refused) int key."""


def check_metadata(value: object, task_id: str) -> str:
    """The canonical JSON text to store for `value`, or InvalidArgumentError naming the key.

    Canonical (sorted keys, no spaces, UTF-8 as is) so that equal metadata is equal text
    on both engines and a copy between them is bit for bit.
    """
    if not isinstance(value, dict):
        raise InvalidArgumentError(
            f"metadata of {show(task_id)} is a {type(value).__name__}, not a dict",
            fix='pass a dict with str keys, e.g. {"source": "arxiv", "year": 2024}',
        )
    _check_object(value, (), 1, task_id)
    text = json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    )
    size = len(text.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise InvalidArgumentError(
            f"metadata of {show(task_id)} is {size:,} bytes as JSON, over the limit of "
            f"{MAX_METADATA_BYTES:,} (MAX_METADATA_BYTES)",
            fix="store large content elsewhere and keep a reference (a path, URL or id) in it",
        )
    return text


def load_metadata(text: str | bytes | dict[str, Any] | None) -> dict[str, Any]:
    """Stored metadata as a dict: SQLite's JSON text, or the dict psycopg's jsonb loader made.

    None (a NULL column) reads as ``{}``. PostgreSQL prints a float that is a whole number
    in full (``1e+19`` as ``10000000000000000000``); an integer beyond 64 bits read back
    becomes the float it was, so that stored metadata can always be stored again.
    """
    if text is None:
        return {}
    if isinstance(text, dict):
        value: object = _narrowed(text)
    else:
        try:
            value = json.loads(text, parse_int=_parse_int)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgumentError(
                f"stored metadata is not valid JSON ({e})",
                fix="store metadata only through shareddb, which writes checked JSON objects",
            ) from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(
            f"stored metadata is a JSON {type(value).__name__}, not an object",
            fix="store metadata only through shareddb, which writes checked JSON objects",
        )
    return value


def _parse_int(digits: str) -> int | float:
    number = int(digits)
    return number if INT64_MIN <= number <= INT64_MAX else float(digits)


def _narrowed(value: Any) -> Any:
    """`value` with integers beyond 64 bits as floats; the same object when there are none."""
    if isinstance(value, dict):
        items = {k: _narrowed(v) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    if isinstance(value, list):
        values = [_narrowed(v) for v in value]
        return value if all(a is b for a, b in zip(values, value, strict=True)) else values
    if type(value) is int and not INT64_MIN <= value <= INT64_MAX:
        return float(value)
    return value


def _check_depth(depth: int, path: _Path, task_id: str) -> None:
    if depth > MAX_METADATA_DEPTH:
        raise _error(
            task_id,
            path,
            f"nests deeper than {MAX_METADATA_DEPTH} levels",
            "flatten it (metadata is for filtering, not for whole documents)",
        )


def _check_object(value: dict[Any, Any], path: _Path, depth: int, task_id: str) -> None:
    _check_depth(depth, path, task_id)
    for key, item in value.items():
        here = (*path, key)
        if not isinstance(key, str):
            raise _error(
                task_id,
                here,
                f"is of type {type(key).__name__}, not str",
                "metadata keys must be str (JSON would silently turn it into text): "
                "convert it with str()",
            )
        _check_text(key, "contains", here, task_id)
        _check_value(item, here, depth, task_id)


def _check_value(value: object, path: _Path, depth: int, task_id: str) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise _error(
                task_id,
                path,
                f"holds {number_text(value)}, beyond 64-bit integers",
                "store it as a str (or as a float if an approximation will do)",
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _error(
                task_id,
                path,
                f"holds {float.__repr__(value)}",
                "store a finite number or None (JSON has no NaN or infinity)",
            )
        return
    if isinstance(value, str):
        _check_text(value, "holds text with", path, task_id)
        return
    if isinstance(value, dict):
        _check_object(value, path, depth + 1, task_id)
        return
    if isinstance(value, list | tuple):
        _check_depth(depth + 1, path, task_id)
        for position, item in enumerate(value):
            _check_value(item, (*path, _Position(position)), depth + 1, task_id)
        return
    raise _error(task_id, path, f"holds a value of type {type(value).__name__}", _conversion(value))


def _check_text(text: str, what: str, path: _Path, task_id: str) -> None:
    if "\x00" in text:
        raise _error(
            task_id,
            path,
            f"{what} a NUL character",
            "remove it (PostgreSQL's jsonb can't store NUL, so neither engine does)",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _error(
            task_id,
            path,
            f"{what} a lone surrogate, which is not valid UTF-8",
            "decode the text properly before storing it",
        ) from None


def _conversion(value: object) -> str:
    """The fix for a value JSON can't hold: the conversion its type calls for."""
    kind = type(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "decode it to str (or store base64 text for binary data)"
    if isinstance(value, set | frozenset):
        return "store a sorted list instead"
    if hasattr(value, "isoformat"):
        return "store its isoformat() text instead"
    if kind.__module__ == "numpy":
        return "convert it with int() or float() (or .tolist() for an array)"
    if kind.__name__ == "Decimal":
        return "convert it with float() (or str() to keep every digit)"
    return "store JSON values only: None, bool, int, float, str, list or dict"


def _error(task_id: str, path: _Path, problem: str, fix: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"metadata of {show(task_id)}: {_where(path)} {problem}", fix=fix)


def _where(path: _Path) -> str:
    """``key 'a' → 'b' → [2]``: the steps from the top to the offending key or value."""
    steps = [_step(step) for step in path]
    if len(steps) > 8:
        steps = [*steps[:3], "…", *steps[-3:]]
    return "key " + " → ".join(steps)


def _step(step: object) -> str:
    if isinstance(step, str):
        return show(step)
    if isinstance(step, _Position):
        return f"[{int(step)}]"
    if isinstance(step, int | float):
        return number_text(step)
    if isinstance(step, bytes) or step is None:
        text = repr(step)
        return text if len(text) <= 40 else f"{text[:30]}…"
    return f"<{type(step).__name__}>"


def number_text(value: int | float) -> str:
    """A number for a message: its repr, or its size when the digits would be too many.

    (Python refuses to print an int of more than 4,300 digits.)
    """
    if isinstance(value, float):
        return float.__repr__(value)
    if isinstance(value, bool) or value.bit_length() <= 128:
        return repr(value)
    return f"an integer of {value.bit_length():,} bits"
