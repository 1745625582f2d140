"""Database URLs: parsing, validation and password masking."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

import psycopg.conninfo

from ._embedded import EMBEDDED_PREFIX, default_data_dir
from .errors import ConfigError

BackendType = Literal["sqlite", "postgres"]

MASK = "***"
_SQLITE_PREFIX = "sqlite:///"
_PG_SCHEMES = ("postgresql://", "postgres://")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
_RAW_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]*)", re.IGNORECASE)
_RAW_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://([^/?#]*)@")


@dataclass(frozen=True)
class DbTarget:
    """A parsed database URL.

    `sqlite_path` is set for SQLite (None for ``:memory:``); `conninfo` is the
    libpq URI for PostgreSQL. `password` is kept only to scrub it from messages.
    `embedded_dir` is the data folder of an embedded PostgreSQL
    (``postgresql+embedded://``); its `conninfo` stays empty until the server runs.
    """

    url: str
    backend: BackendType
    sqlite_path: Path | None = None
    conninfo: str = ""
    password: str = ""
    embedded_dir: Path | None = None

    def __repr__(self) -> str:
        # The generated repr would show url, conninfo and password in clear.
        return f"DbTarget({self.masked!r}, backend={self.backend!r})"

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
    # "~" is expanded, as in configuration paths and embedded PostgreSQL urls.
    return DbTarget(url=url, backend="sqlite", sqlite_path=Path(path).expanduser())


def _parse_embedded(url: str) -> DbTarget:
    """``postgresql+embedded://`` [``/`` data folder, written like a SQLite URL's file]."""
    raw = url[len(EMBEDDED_PREFIX) :]
    if "?" in raw or "#" in raw or (raw and not raw.startswith("/")):
        raise ConfigError(
            f"embedded postgresql url {url!r} is not of the form postgresql+embedded:///dir; "
            "use postgresql+embedded:///relative/dir, postgresql+embedded:////absolute/dir "
            "or postgresql+embedded:// for the default folder"
        )
    path = unquote(raw[1:])
    folder = Path(path).expanduser() if path else default_data_dir()
    return DbTarget(url=url, backend="postgres", embedded_dir=folder)


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
    return DbTarget(url=url, backend="postgres", conninfo=url, password=password)


def _scrub_raw_passwords(text: str, url: str) -> str:
    """`text` with `url` masked and every password as written in `url` (raw or decoded) hidden."""
    text = text.replace(url, mask_url(url))
    secrets = _RAW_QUERY_PASSWORD.findall(url)
    userinfo = _RAW_USERINFO.match(url)
    if userinfo and ":" in userinfo.group(1):
        secrets.append(userinfo.group(1).split(":", 1)[1])
    for secret in sorted(set(secrets), key=len, reverse=True):
        for form in (secret, unquote(secret)):
            if form:
                text = text.replace(form, MASK)
    return text


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
