"""Hypothesis fuzzing of configuration parsing and migration file discovery.

Whatever the file says, `load_config()` returns a DbConfig whose url parses, or raises
ConfigError; whatever a migration folder holds, `discover()` returns every migration in
version order or raises MigrationError. Nothing else may escape.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shareddb import ConfigError, MigrationError, load_config
from shareddb._core.url import parse_url
from shareddb._migrations.files import (
    NO_TRANSACTION_DIRECTIVE,
    checksum,
    discover,
    migration_folders,
)

pytestmark = pytest.mark.reliability

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# -- configuration -----------------------------------------------------------------------------

KNOWN_KEYS = ["db", "sessiondb", "url", "backend", "sqlite", "postgres", "path"]
KNOWN_KEYS += ["connection_string", "embedded", "data_dir"]
URLISH = st.sampled_from(
    [
        "sqlite:///x.db",
        "sqlite:////abs/x.db",
        "sqlite:///:memory:",
        "postgresql://u:p@localhost:5432/db",
        "postgres://h/db?password=p",
        "postgresql+embedded://",
        "postgresql+embedded:///pgdata",
        "postgresql://u:p@[::1/db",
        "mysql://u@h/db",
        "sqlite:///x.db?mode=ro",
        "",
        "sqlite",
        "postgres",
    ]
)
scalars = st.one_of(
    URLISH,
    st.text(max_size=40),
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(min_size=1, max_size=12))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
documents = st.dictionaries(keys, values, max_size=4)


def toml_key(key: str) -> str:
    return toml_value(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = "".join(
            f"\\u{ord(c):04x}"
            if ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF
            else "\\" + c
            if c in '"\\'
            else c
            for c in value
        )
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(data: dict[str, Any]) -> str:
    """Top-level scalars first, then each table as a [section] (nested ones inline)."""
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"[{toml_key(k)}]")
            lines += [f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def check_loads_or_refuses(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        path.write_bytes(content)
        try:
            config = load_config(path)
        except ConfigError as e:
            assert str(e)
            return
        target = parse_url(config.url)  # whatever won is a url shareddb accepts
        assert config.path == path.absolute() and config.path_exists
        assert target.engine in ("sqlite", "postgres")


@FUZZ
@given(documents)
def test_generated_toml_loads_or_is_refused_clearly(data: dict[str, Any]) -> None:
    check_loads_or_refuses(toml_document(data).encode("utf-8", "surrogatepass"))


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )
)
def test_arbitrary_bytes_as_a_config_file_load_or_are_refused(content: bytes) -> None:
    check_loads_or_refuses(content)


@FUZZ
@given(
    url=URLISH,
    path=st.text(min_size=1, max_size=30),
    backend=st.sampled_from(["sqlite", "postgres"]),
)
def test_the_winning_setting_is_the_one_configured(url: str, path: str, backend: str) -> None:
    """[db] url wins over [sessiondb]; the sqlite path is kept relative to the file."""
    text = toml_document(
        {"db": {"url": url}, "sessiondb": {"backend": backend, "sqlite": {"path": path}}}
    )
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "config.toml"
        file.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            config = load_config(file)
        except ConfigError:
            return
        assert config.source == "db" and config.url == url


# -- migration discovery -----------------------------------------------------------------------

slugs = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,20}", fullmatch=True)
good_names = st.builds(lambda v, s: f"{v:04d}_{s}.sql", st.integers(0, 99_999), slugs)
odd_names = st.one_of(
    st.text(min_size=1, max_size=30).map(lambda t: t + ".sql"),
    st.text(min_size=1, max_size=30),
    st.builds(lambda v, s: f"{v:04d}_{s}.SQL", st.integers(0, 9999), slugs),
    st.builds(lambda v, s: f"{v}_{s}.sql", st.integers(0, 999), slugs),
    st.sampled_from(["0001_a.sql\n", " 0001_a.sql", "0001_.sql", "0001_a.sql.bak", "README"]),
)
names = st.one_of(good_names, good_names, odd_names)
contents = st.one_of(
    st.text(max_size=200),
    st.text(max_size=100).map(lambda t: f"{NO_TRANSACTION_DIRECTIVE}\n{t}"),
    st.text(max_size=100).map(lambda t: "\ufeff" + t.replace("\n", "\r\n")),
    st.binary(max_size=100),
)
folders = st.dictionaries(names, contents, max_size=6)


def write_folder(folder: Path, files: dict[str, str | bytes]) -> dict[str, bytes]:
    """Write what the file system accepts; the names and bytes actually written."""
    written: dict[str, bytes] = {}
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
        try:
            (folder / name).write_bytes(data)
        except (OSError, ValueError):
            continue  # '/', NUL, '.', '..', too long, surrogates: not a file name here
        if (folder / name).is_file() and name in os.listdir(folder):
            written[name] = data
    return written


@FUZZ
@given(folders)
def test_discovery_returns_every_migration_in_order_or_refuses(
    files: dict[str, str | bytes],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        written = write_folder(folder, files)
        try:
            found = discover("app", folder)
        except MigrationError as e:
            assert str(e) and e.namespace == "app"
            return
        versions = [m.version for m in found]
        assert versions == sorted(set(versions))
        sql_files = {n for n in written if n.lower().endswith(".sql")}
        assert {m.filename for m in found} == sql_files  # no .sql file silently skipped
        for m in found:
            text = written[m.filename].decode("utf-8-sig")
            assert m.text == text
            assert m.checksum == checksum(text.replace("\r\n", "\n"))
            # The same file saved with a BOM and CRLF line endings (from its LF form: a text
            # holding CRLF already must not become CR CR LF).
            crlf = text.replace("\r\n", "\n").replace("\n", "\r\n")
            assert m.checksum == checksum("\ufeff" + crlf)
            leading = [line.strip() for line in text.splitlines() if line.strip()]
            assert m.transactional or any(
                line.replace(" ", "").lower() == NO_TRANSACTION_DIRECTIVE.replace(" ", "")
                for line in leading
            )


@FUZZ
@given(st.text(min_size=0, max_size=70))
def test_namespaces_are_plain_names_or_refused(namespace: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folders = migration_folders("sqlite", {namespace: tmp})
        except MigrationError as e:
            assert namespace in str(e) or repr(namespace) in str(e)
            return
        assert namespace in folders
        assert namespace.isascii() and namespace.strip() == namespace
        assert "\n" not in namespace and 1 <= len(namespace) <= 63
