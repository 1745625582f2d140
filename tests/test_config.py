"""load_config(): file, environment and defaults, their precedence, and bad files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shareddb import ConfigError, DbConfig, DbService, load_config
from shareddb._core.url import parse_url

PG_URL = "postgresql://alice:s3cret@db.example.com:5432/app"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def sqlite_file(url: str) -> Path:
    path = parse_url(url).sqlite_path
    assert path is not None
    return path


def test_no_file_means_the_default_sqlite_file_under_the_user_data_dir(tmp_path: Path) -> None:
    config = load_config()
    assert config.source == "default"
    assert config.path == tmp_path / "xdg-config" / "shareddb" / "config.toml"
    assert config.path_exists is False
    assert sqlite_file(config.url) == tmp_path / "xdg-data" / "shareddb" / "shareddb.db"


def test_default_file_in_the_user_config_dir_is_read(tmp_path: Path) -> None:
    write(
        tmp_path / "xdg-config" / "shareddb" / "config.toml",
        '[sessiondb]\nbackend = "postgres"\n'
        f'[sessiondb.postgres]\nconnection_string = "{PG_URL}"\n',
    )
    config = load_config()
    assert config.url == PG_URL
    assert config.source == "sessiondb"
    assert config.path_exists is True


def test_shareddb_config_env_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write(tmp_path / "elsewhere" / "my.toml", f'[db]\nurl = "{PG_URL}"\n')
    write(tmp_path / "xdg-config" / "shareddb" / "config.toml", '[db]\nurl = "sqlite:///x.db"\n')
    monkeypatch.setenv("SHAREDDB_CONFIG", str(file))
    config = load_config()
    assert config.url == PG_URL
    assert config.source == "db"
    assert config.path == file


def test_shareddb_config_pointing_at_a_missing_file_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHAREDDB_CONFIG", str(tmp_path / "absent.toml"))
    config = load_config()
    assert config.source == "default"
    assert config.path == tmp_path / "absent.toml"
    assert config.path_exists is False


def test_explicit_path_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(missing)
    assert str(missing) in str(info.value)


def test_sessiondb_sqlite_absolute_path(tmp_path: Path) -> None:
    db_path = tmp_path / "data" / "my db%1.sqlite"
    file = write(tmp_path / "c.toml", f'[sessiondb.sqlite]\npath = "{db_path}"\n')
    config = load_config(file)
    assert config.source == "sessiondb"
    assert sqlite_file(config.url) == db_path


def test_relative_sqlite_path_is_relative_to_the_config_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "conf"
    write(
        conf_dir / "config.toml",
        '[sessiondb]\nbackend = "sqlite"\n[sessiondb.sqlite]\npath = "sub/app.db"\n',
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(conf_dir / "config.toml")
    assert sqlite_file(config.url) == conf_dir / "sub" / "app.db"


def test_relative_config_path_still_gives_an_absolute_database_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "conf" / "config.toml", '[sessiondb.sqlite]\npath = "app.db"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/config.toml")
    monkeypatch.chdir(tmp_path / "conf")  # the application changes directory later
    assert sqlite_file(config.url) == tmp_path / "conf" / "app.db"
    with DbService.from_config(config) as db:
        db.initialize()
    assert (tmp_path / "conf" / "app.db").is_file()
    assert not (tmp_path / "conf" / "conf").exists()


def test_home_relative_sqlite_path_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    file = write(tmp_path / "c.toml", '[sessiondb.sqlite]\npath = "~/dbs/app.db"\n')
    assert sqlite_file(load_config(file).url) == tmp_path / "home" / "dbs" / "app.db"


def test_sqlite_memory_path_stays_in_memory(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", '[sessiondb.sqlite]\npath = ":memory:"\n')
    assert load_config(file).url == "sqlite:///:memory:"


def test_config_url_with_unusual_characters_opens_that_very_file(tmp_path: Path) -> None:
    db_path = tmp_path / "odd dir #1" / "100% ?.db"
    file = write(tmp_path / "c.toml", f'[sessiondb.sqlite]\npath = "{db_path}"\n')
    with DbService.from_config(load_config(file)) as db:
        db.initialize()
    assert db_path.is_file()


def test_db_url_wins_over_sessiondb(tmp_path: Path) -> None:
    file = write(
        tmp_path / "c.toml",
        f'[db]\nurl = "{PG_URL}"\n[sessiondb]\nbackend = "sqlite"\n'
        '[sessiondb.sqlite]\npath = "/tmp/x.db"\n',
    )
    config = load_config(file)
    assert config.url == PG_URL
    assert config.source == "db"
    assert config.path == file
    assert config.path_exists is True


def test_env_url_wins_over_db_and_sessiondb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write(
        tmp_path / "c.toml",
        f'[db]\nurl = "{PG_URL}"\n[sessiondb.sqlite]\npath = "/tmp/x.db"\n',
    )
    monkeypatch.setenv("SHAREDDB_URL", "sqlite:////tmp/from-env.db")
    config = load_config(file)
    assert config.url == "sqlite:////tmp/from-env.db"
    assert config.source == "env"
    assert "SHAREDDB_URL" in config.describe_source()


def test_env_url_wins_over_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREDDB_URL", PG_URL)
    config = load_config()
    assert (config.url, config.source, config.path_exists) == (PG_URL, "env", False)


def test_empty_env_url_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREDDB_URL", "")
    assert load_config().source == "default"


def test_invalid_env_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREDDB_URL", "mysql://u:s3cret@h/db")
    with pytest.raises(ConfigError, match="SHAREDDB_URL") as info:
        load_config()
    assert "s3cret" not in str(info.value)


def test_env_url_does_not_hide_a_broken_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write(tmp_path / "c.toml", '[sessiondb]\nbackend = "oracle"\n')
    monkeypatch.setenv("SHAREDDB_URL", PG_URL)
    with pytest.raises(ConfigError, match=r"sessiondb\.backend"):
        load_config(file)


def test_db_url_does_not_hide_a_broken_sessiondb(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", f'[db]\nurl = "{PG_URL}"\n[sessiondb]\nbackend = "oracle"\n')
    with pytest.raises(ConfigError, match=r"sessiondb\.backend") as info:
        load_config(file)
    assert str(file) in str(info.value)


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", "# nothing configured yet\n")
    config = load_config(file)
    assert config.source == "default"
    assert config.path_exists is True
    assert sqlite_file(config.url) == tmp_path / "xdg-data" / "shareddb" / "shareddb.db"


def test_sessiondb_postgres_connection_string(tmp_path: Path) -> None:
    file = write(
        tmp_path / "c.toml",
        f'[sessiondb]\nbackend = "postgres"\n[sessiondb.postgres]\nconnection_string = "{PG_URL}"\n'
        '[sessiondb.sqlite]\npath = "ignored.db"\n',
    )
    config = load_config(file)
    assert (config.url, config.source) == (PG_URL, "sessiondb")
    assert str(file) in config.describe_source()
    assert "s3cret" not in repr(config)


def test_file_with_a_bom_and_crlf_is_read(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_bytes(b'\xef\xbb\xbf[db]\r\nurl = "sqlite:////tmp/bom.db"\r\n')
    assert load_config(file).url == "sqlite:////tmp/bom.db"


def test_config_is_a_frozen_dataclass_and_builds_a_service(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", f'[db]\nurl = "{PG_URL}"\n')
    config = load_config(file)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.url = "sqlite:///x.db"  # type: ignore[misc]
    db = DbService.from_config(config)
    assert db.get_backend_type() == "postgres"
    assert "s3cret" not in repr(db)
    assert DbConfig(url=PG_URL) == DbConfig(url=PG_URL)


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ("[db\nurl = 1\n", None, "not valid TOML"),
        ('[sessiondb]\nbackend = "mysql"\n', "sessiondb.backend", "'sqlite' or 'postgres'"),
        ('[sessiondb]\nbackend = "postgres"\n', "sessiondb.postgres.connection_string", "add"),
        (
            '[sessiondb]\nbackend = "postgres"\n[sessiondb.postgres]\n',
            "sessiondb.postgres.connection_string",
            "add",
        ),
        ('[dbs]\nurl = "sqlite:///x.db"\n', "dbs", "known keys"),
        ('[db]\nuri = "sqlite:///x.db"\n', "db.uri", "known keys"),
        ('[sessiondb]\nbakend = "sqlite"\n', "sessiondb.bakend", "known keys"),
        ('[sessiondb.sqlite]\nfile = "x.db"\n', "sessiondb.sqlite.file", "known keys"),
        ('[sessiondb.postgres]\ndsn = "x"\n', "sessiondb.postgres.dsn", "known keys"),
        ("[db]\nurl = 5\n", "db.url", "must be a string"),
        ("[sessiondb]\nbackend = 5\n", "sessiondb.backend", "must be a string"),
        ("[sessiondb.sqlite]\npath = 5\n", "sessiondb.sqlite.path", "must be a string"),
        ('[sessiondb.sqlite]\npath = ""\n', "sessiondb.sqlite.path", "empty"),
        (
            '[sessiondb]\nbackend = "postgres"\n[sessiondb.postgres]\nconnection_string = 5\n',
            "sessiondb.postgres.connection_string",
            "must be a string",
        ),
        ('sessiondb = "sqlite"\n', "sessiondb", "must be a table"),
        ('db = "sqlite:///x.db"\n', "db", "must be a table"),
        ('[sessiondb]\nsqlite = "x.db"\n', "sessiondb.sqlite", "must be a table"),
        ('[db]\nurl = "mysql://h/db"\n', "db.url", "unknown scheme"),
        (
            '[sessiondb]\nbackend = "postgres"\n[sessiondb.postgres]\n'
            'connection_string = "host=localhost dbname=x"\n',
            "sessiondb.postgres.connection_string",
            "unknown scheme",
        ),
    ],
)
def test_bad_file_raises_config_error_naming_file_and_key(
    tmp_path: Path, text: str, key: str | None, hint: str
) -> None:
    file = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    message = str(info.value)
    assert str(file) in message
    if key is not None:
        assert key in message
    assert hint in message


def test_syntax_error_reports_the_line(tmp_path: Path) -> None:
    file = write(tmp_path / "bad.toml", '[db]\nurl = "sqlite:///a.db"\nurl = "x"\n')
    with pytest.raises(ConfigError, match=r"line 3") as info:
        load_config(file)
    assert str(file) in str(info.value)


def test_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "latin1.toml"
    file.write_bytes('[db]\nurl = "sqlite:///caf\xe9.db"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_config(file)
    assert str(file) in str(info.value)


def test_config_error_is_a_value_error_and_a_shareddb_error(tmp_path: Path) -> None:
    from shareddb import ShareddbError

    file = write(tmp_path / "bad.toml", "[db\n")
    with pytest.raises(ValueError):
        load_config(file)
    with pytest.raises(ShareddbError):
        load_config(file)
