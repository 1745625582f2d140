"""URL parsing and password masking (no database needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shareddb import ConfigError, DbConfig, DbService
from shareddb._core.url import mask_url, parse_url

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relative.db", Path("relative.db")),
        ("sqlite:///sub/dir/relative.db", Path("sub/dir/relative.db")),
        ("sqlite:////absolute/path.db", Path("/absolute/path.db")),
        ("sqlite:////tmp/with%20space.db", Path("/tmp/with space.db")),
    ],
)
def test_sqlite_urls_name_their_file(url: str, path: Path) -> None:
    target = parse_url(url)
    assert target.engine == "sqlite"
    assert target.sqlite_path == path
    assert target.password == ""


def test_sqlite_memory_url_has_no_file() -> None:
    target = parse_url("sqlite:///:memory:")
    assert target.engine == "sqlite"
    assert target.sqlite_path is None


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_both_postgres_schemes_are_accepted(scheme: str) -> None:
    target = parse_url(f"{scheme}://alice:{SECRET}@db.example.com:6543/app")
    assert target.engine == "postgres"
    assert target.conninfo == f"{scheme}://alice:{SECRET}@db.example.com:6543/app"
    assert target.password == SECRET


def test_postgres_url_without_password_parses() -> None:
    target = parse_url("postgresql://alice@localhost/app")
    assert target.engine == "postgres"
    assert target.password == ""
    assert target.masked == "postgresql://alice@localhost/app"


@pytest.mark.parametrize(
    "url",
    [
        "mysql://user:pw@host/db",
        "sqlite://relative.db",  # two slashes: a host part, not a path
        "sqlite:relative.db",
        "file:///tmp/x.db",
        "/tmp/plain/path.db",
        "POSTGRESQL://host/db",
        "http://host/db",
    ],
)
def test_unknown_schemes_are_refused_with_the_accepted_forms(url: str) -> None:
    with pytest.raises(ConfigError, match="unknown scheme") as info:
        parse_url(url)
    assert "sqlite:///" in str(info.value)
    assert "postgresql://" in str(info.value)


@pytest.mark.parametrize("url", ["", None, 42, b"sqlite:///x.db"])
def test_empty_or_non_string_url_is_refused(url: object) -> None:
    with pytest.raises(ConfigError, match="empty or not a string"):
        parse_url(url)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    ["sqlite:///x\x00.db", f"postgresql://u:{SECRET}@host/d\x00b"],
)
def test_nul_byte_is_refused_without_echoing_the_password(url: str) -> None:
    with pytest.raises(ConfigError, match="NUL byte") as info:
        parse_url(url)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite:///x.db?mode=ro", "sqlite:///x.db#frag"])
def test_malformed_sqlite_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="sqlite url"):
        parse_url(url)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{SECRET}@host/db?nosuchoption=1",
        f"postgresql://u:{SECRET}@[::1/db",
        f"postgresql://u:{SECRET}%zz@host/db",  # a bad percent escape inside the password
        f"postgresql://u@host/db?password={SECRET}%zz",
        f"postgresql://u:{SECRET} x@host/db",
    ],
)
def test_invalid_postgres_url_error_masks_the_password(url: str) -> None:
    with pytest.raises(ConfigError, match="not a valid libpq URI") as info:
        parse_url(url)
    message = str(info.value)
    assert SECRET not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"postgresql://alice:{SECRET}@h:5432/db", "postgresql://alice:***@h:5432/db"),
        (f"postgres://alice:{SECRET}@h/db", "postgres://alice:***@h/db"),
        (f"postgresql://:{SECRET}@h/db", "postgresql://:***@h/db"),
        ("postgresql://alice:p%40ss%2Fw0rd@h/db", "postgresql://alice:***@h/db"),
        ("postgresql://alice:p@ss@h/db", "postgresql://alice:***@h/db"),
        (f"postgresql://alice:{SECRET}@h1:1,h2:2/db", "postgresql://alice:***@h1:1,h2:2/db"),
        (
            f"postgresql://alice@h/db?password={SECRET}&sslmode=require",
            "postgresql://alice@h/db?password=***&sslmode=require",
        ),
        (
            f"postgresql://alice@h/db?sslmode=require&PASSWORD={SECRET}",
            "postgresql://alice@h/db?sslmode=require&PASSWORD=***",
        ),
        ("postgresql://alice@h/db", "postgresql://alice@h/db"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_mask_url_hides_every_password_form(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_target_repr_hides_the_password() -> None:
    target = parse_url(f"postgresql://alice:{SECRET}@h/db?password={SECRET}")
    assert SECRET not in repr(target)
    assert SECRET not in str(target)


def test_scrub_removes_plain_and_url_encoded_password_from_driver_messages() -> None:
    password = "p@ss/w0rd"
    target = parse_url("postgresql://alice:p%40ss%2Fw0rd@h/db")
    assert target.password == password
    echoed = f"failed for postgresql://alice:p%40ss%2Fw0rd@h/db: bad {password} and p%40ss%2Fw0rd"
    scrubbed = target.scrub(echoed)
    assert password not in scrubbed
    assert "p%40ss%2Fw0rd" not in scrubbed
    assert "postgresql://alice:***@h/db" in scrubbed


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://alice:{SECRET}@h/db",
        f"postgresql://alice@h/db?password={SECRET}",
        "postgresql://alice:p%40ss%2Fw0rd@h/db",
    ],
)
def test_service_and_config_reprs_hide_the_password(url: str) -> None:
    db = DbService(url)
    config = DbConfig(url=url, source="env")
    for text in (repr(db), str(db), db.url, repr(config), str(config)):
        assert SECRET not in text
        assert "p%40ss" not in text
        assert "***" in text


def test_sqlite_url_expands_the_home_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_url("sqlite:///~/dbs/x.db").sqlite_path == tmp_path / "dbs" / "x.db"
