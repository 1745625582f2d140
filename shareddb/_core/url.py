"""Database URLs: parsing, validation and password masking."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import psycopg.conninfo

from shareddb._core.types import EngineKind
from shareddb._engines.postgres.embedded import EMBEDDED_PREFIX, default_data_dir
from shareddb.errors import ConfigError

MASK = "***"
_SQLITE_PREFIX = "sqlite:///"
_PG_SCHEMES = ("postgresql://", "postgres://")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
_RAW_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]*)", re.IGNORECASE)
# The user info as loosely as it may be written: up to the last '@' before any '?' or '#'.
_RAW_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://([^?#]*)@")


@dataclass(frozen=True)
class DbTarget:
    """A parsed database URL.

    `sqlite_path` is set for SQLite (None for ``:memory:``); `conninfo` is the
    libpq URI for PostgreSQL. `password` is kept only to scrub it from messages.
    `embedded_dir` is the data folder of an embedded PostgreSQL
    (``postgresql+embedded://``); its `conninfo` stays empty until the server runs.
    """

    url: str
    engine: EngineKind
    sqlite_path: Path | None = None
    conninfo: str = ""
    password: str = ""
    embedded_dir: Path | None = None

    def __repr__(self) -> str:
        # The generated repr would show url, conninfo and password in clear.
        return f"DbTarget({self.masked!r}, engine={self.engine!r})"

    @property
    def masked(self) -> str:
        """The URL with any password replaced by ``***``."""
        return mask_url(self.url)

    def scrub(self, text: str) -> str:
        """Remove the password from a message that may echo it (a driver error)."""
        text = text.replace(self.url, self.masked)
        if self.password:
            for form in (self.password, quote(self.password, safe="")):
                text = text.replace(form, MASK)
        return text


def expand_user(path: str | os.PathLike[str], what: str) -> Path:
    """`Path(path).expanduser()`, with a ``~user`` that names no known user as ConfigError."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # no such user, or no home folder to expand "~" to
        raise ConfigError(
            f"{what} {str(path)!r} starts with '~', but that home folder can't be found; "
            "write the full path"
        ) from None


def parse_url(url: str) -> DbTarget:
    """Parse a shareddb URL, raising ConfigError with the accepted forms."""
    if not isinstance(url, str) or not url:
        # Not the value itself: bytes or an object's repr may hold a password.
        got = "an empty str" if isinstance(url, str) else f"a {type(url).__name__}"
        raise ConfigError(
            f"database url is empty or not a string (got {got}); use sqlite:///path.db or "
            "postgresql://user@host/db"
        )
    if "\x00" in url:
        raise ConfigError(
            f"database url {mask_url(url)!r} contains a NUL byte; remove it from the url"
        )
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"database url {mask_url(url)!r} holds a lone surrogate, which is not valid "
            "Unicode text; decode the url properly (a file name that is not UTF-8 can't be named "
            "in a url: rename the file)"
        ) from None
    if url.startswith(_SQLITE_PREFIX):
        return _parse_sqlite(url)
    if url.startswith(EMBEDDED_PREFIX):
        return _parse_embedded(url)
    if url.startswith(_PG_SCHEMES):
        return _parse_postgres(url)
    raise ConfigError(
        f"database url {mask_url(url)!r} has an unknown scheme; use sqlite:///relative.db, "
        "sqlite:////absolute/path.db, sqlite:///:memory:, postgresql://user@host:5432/db "
        "or postgresql+embedded:///data/dir"
    )


def _parse_sqlite(url: str) -> DbTarget:
    raw = url[len(_SQLITE_PREFIX) :]
    if "?" in raw or "#" in raw:
        raise ConfigError(
            f"sqlite url {mask_url(url)!r} has a query or fragment; shareddb takes none, "
            "remove everything from '?' or '#'"
        )
    path = unquote(raw)
    if not path:
        raise ConfigError(
            f"sqlite url {url!r} names no file; use sqlite:///relative.db, "
            "sqlite:////absolute/path.db or sqlite:///:memory:"
        )
    if path == ":memory:":
        return DbTarget(url=url, engine="sqlite", sqlite_path=None)
    # "~" is expanded, as in configuration paths and embedded PostgreSQL urls.
    return DbTarget(url=url, engine="sqlite", sqlite_path=expand_user(path, "sqlite url path"))


def _parse_embedded(url: str) -> DbTarget:
    """``postgresql+embedded://`` [``/`` data folder, written like a SQLite URL's file]."""
    raw = url[len(EMBEDDED_PREFIX) :]
    if "?" in raw or "#" in raw or (raw and not raw.startswith("/")):
        raise ConfigError(
            f"embedded postgresql url {mask_url(url)!r} is not of the form "
            "postgresql+embedded:///dir; "
            "use postgresql+embedded:///relative/dir, postgresql+embedded:////absolute/dir "
            "or postgresql+embedded:// for the default folder"
        )
    path = unquote(raw[1:])
    folder = expand_user(path, "embedded postgresql data folder") if path else default_data_dir()
    return DbTarget(url=url, engine="postgres", embedded_dir=folder)


def _parse_postgres(url: str) -> DbTarget:
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        # libpq quotes the offending token, which may be (part of) the password.
        detail = _scrub_raw_passwords(" ".join(str(e).split()), url)
        raise ConfigError(
            f"postgresql url {mask_url(url)!r} is not a valid libpq URI ({detail}); "
            "use postgresql://user:password@host:5432/dbname"
        ) from None
    password = str(params.get("password") or "")
    return DbTarget(url=url, engine="postgres", conninfo=url, password=password)


def _scrub_raw_passwords(text: str, url: str) -> str:
    """`text` with `url` masked and every password as written in `url` (raw or decoded) hidden.

    libpq quotes the token it could not parse, which may be a piece of a password (a
    password with a raw ``/`` or space, say): a quoted token that overlaps a password
    in `url`, or that can't be found in it, is hidden too.
    """
    text = text.replace(url, mask_url(url))
    spans = _secret_spans(url)
    for secret in sorted({url[a:b] for a, b in spans}, key=len, reverse=True):
        for form in (secret, unquote(secret)):
            if form:
                text = text.replace(form, MASK)

    def hide(match: re.Match[str]) -> str:
        token = match.group(1)
        if not token or token == MASK:
            return match.group(0)
        found = [m.start() for m in re.finditer(re.escape(token), url)]
        overlaps = any(a < start + len(token) and start < b for start in found for a, b in spans)
        return f'"{MASK}"' if overlaps or not found else match.group(0)

    return re.sub(r'"([^"]*)"', hide, text)


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """Where passwords are written in `url`: ``?password=`` values and the user info's."""
    spans = [m.span(1) for m in _RAW_QUERY_PASSWORD.finditer(url)]
    userinfo = _RAW_USERINFO.match(url)
    if userinfo and ":" in userinfo.group(1):
        spans.append((userinfo.start(1) + userinfo.group(1).index(":") + 1, userinfo.end(1)))
    return spans


def mask_url(url: str) -> str:
    """Return `url` with the password in its user info or query replaced by ``***``.

    A password written with a raw ``/`` or ``@`` hides the URL's structure; then
    everything from the user name's ``:`` to the last ``@`` before any ``?`` is masked,
    which may hide more than the password but never less.
    """
    if not isinstance(url, str):
        return repr(url)
    masked = _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", url)
    if url.startswith(_SQLITE_PREFIX):
        return masked  # a file path: ':' and '@' are part of the name
    loose = _RAW_USERINFO.match(masked)
    if loose and ":" in loose.group(1):
        user = loose.group(1).split(":", 1)[0]
        return f"{masked[: loose.start(1)]}{user}:{MASK}@{masked[loose.end() :]}"
    return masked
