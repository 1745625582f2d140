"""Database URLs: parsing, validation and password masking."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

import psycopg.conninfo

from .errors import ConfigError

BackendType = Literal["sqlite", "postgres"]

MASK = "***"
_SQLITE_PREFIX = "sqlite:///"
_PG_SCHEMES = ("postgresql://", "postgres://")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


@dataclass(frozen=True)
class DbTarget:
    """A parsed database URL.

    `sqlite_path` is set for SQLite (None for ``:memory:``); `conninfo` is the
    libpq URI for PostgreSQL. `password` is kept only to scrub it from messages.
    """

    url: str
    backend: BackendType
    sqlite_path: Path | None = None
    conninfo: str = ""
    password: str = ""

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


def parse_url(url: str) -> DbTarget:
    """Parse a shareddb URL, raising ConfigError with the accepted forms."""
    if not isinstance(url, str) or not url:
        raise ConfigError(
            f"database url {url!r} is empty or not a string; use sqlite:///path.db "
            "or postgresql://user@host/db"
        )
    if "\x00" in url:
        raise ConfigError(
            f"database url {mask_url(url)!r} contains a NUL byte; remove it from the url"
        )
    if url.startswith(_SQLITE_PREFIX):
        return _parse_sqlite(url)
    if url.startswith(_PG_SCHEMES):
        return _parse_postgres(url)
    raise ConfigError(
        f"database url {mask_url(url)!r} has an unknown scheme; use sqlite:///relative.db, "
        "sqlite:////absolute/path.db, sqlite:///:memory: or postgresql://user@host:5432/db"
    )


def _parse_sqlite(url: str) -> DbTarget:
    raw = url[len(_SQLITE_PREFIX) :]
    if "?" in raw or "#" in raw:
        raise ConfigError(
            f"sqlite url {url!r} has a query or fragment; shareddb takes none, "
            "remove everything from '?' or '#'"
        )
    path = unquote(raw)
    if not path:
        raise ConfigError(
            f"sqlite url {url!r} names no file; use sqlite:///relative.db, "
            "sqlite:////absolute/path.db or sqlite:///:memory:"
        )
    if path == ":memory:":
        return DbTarget(url=url, backend="sqlite", sqlite_path=None)
    return DbTarget(url=url, backend="sqlite", sqlite_path=Path(path))


def _parse_postgres(url: str) -> DbTarget:
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        detail = str(e).replace(url, mask_url(url))
        raise ConfigError(
            f"postgresql url {mask_url(url)!r} is not a valid libpq URI ({detail}); "
            "use postgresql://user:password@host:5432/dbname"
        ) from None
    password = str(params.get("password") or "")
    return DbTarget(url=url, backend="postgres", conninfo=url, password=password)


def mask_url(url: str) -> str:
    """Return `url` with the password in its user info or query replaced by ``***``."""
    if not isinstance(url, str):
        return repr(url)
    masked = _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", url)
    try:
        parts = urlsplit(masked)
    except ValueError:
        return re.sub(r"//[^@/]*@", f"//{MASK}@", masked)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return masked
    user = userinfo.split(":", 1)[0]
    return masked.replace(
        f"{parts.scheme}://{parts.netloc}", f"{parts.scheme}://{user}:{MASK}@{hosts}", 1
    )
