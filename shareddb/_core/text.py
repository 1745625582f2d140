"""Checks for text that shareddb stores, shared by every domain."""

from __future__ import annotations

from typing import Final

from shareddb.errors import ShareddbError

# PostgreSQL refuses B-tree entries past about 2.7 kB; one limit keeps both backends alike.
MAX_INDEXED_BYTES: Final = 2000


def show(value: str) -> str:
    """`value`'s repr, cut short for messages."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}...{text[-10:]} ({len(value):,} chars)"


def check_stored_text(
    what: str, value: str, error: type[ShareddbError], *, indexed: bool = True
) -> None:
    """Raise `error` for a NUL, a lone surrogate, or (if `indexed`) text over the index limit."""
    if "\x00" in value:
        raise error(
            f"{what} {show(value)} contains a NUL character, which neither backend stores; "
            "remove it"
        )
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise error(
            f"{what} {show(value)} is not valid Unicode text (it holds a lone surrogate); "
            "decode the text properly before storing it"
        ) from None
    if indexed and size > MAX_INDEXED_BYTES:
        raise error(
            f"{what} {show(value)} is {size:,} bytes long; this field is indexed and may "
            f"hold at most {MAX_INDEXED_BYTES:,} bytes (UTF-8): shorten it"
        )
