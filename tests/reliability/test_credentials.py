"""Credentials: a password in the URL never shows in a log record, message, repr or CLI output.

Every API path and CLI command that can fail to connect is run with logging at DEBUG
(pytest's caplog and a handler of our own on the root logger), against URLs that hold a
distinctive password in the user info and in ``?password=``: an unreachable server, a
server that rejects the password, and URLs that are malformed around the password.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from rel_payloads import label
from rel_server import KillablePostgres

from shareddb import (
    DbConfig,
    DbService,
    SessionStorage,
    ShareddbError,
    VectorStorage,
    close_shared_dbs,
    get_shared_db,
    load_config,
)
from shareddb._core.url import parse_url

pytestmark = [pytest.mark.reliability, pytest.mark.postgres]

# Distinctive, and with characters that URLs percent-encode (space, '/', '@', '%', ':').
SECRET = "Zq9 s3cr3t/pw@7%:x"
QUERY_SECRET = "Qv4-qu3ry-s3cr3t"
FORMS = sorted({SECRET, quote(SECRET, safe=""), QUERY_SECRET, quote(QUERY_SECRET, safe="")})
PW_ROLE = "rel_pw_user"


def leaks(text: str) -> list[str]:
    return [form for form in FORMS if form in text]


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def password_server(killable_pg: KillablePostgres) -> Iterator[tuple[str, str]]:
    """The killable server's socket folder, where PW_ROLE must give a password, and the
    name of a fresh database there that role postgres reaches without one (trust)."""
    dbname = str(conninfo_to_dict(killable_pg.fresh_database())["dbname"])
    with psycopg.connect(killable_pg.uri, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {PW_ROLE}")
        conn.execute(f"CREATE ROLE {PW_ROLE} LOGIN PASSWORD 'the-right-one'")
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
        original = hba.read_text()
        hba.write_text(f"local all {PW_ROLE} scram-sha-256\n" + original)
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield str(killable_pg.data_dir), dbname
    finally:
        hba.write_text(original)
        with psycopg.connect(killable_pg.uri, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")


def bad_urls(server: tuple[str, str]) -> dict[str, str]:
    """Urls with passwords: all but the first fail to connect."""
    socket_dir, dbname = server
    port = closed_port()
    userinfo = quote(SECRET, safe="")
    return {
        "server accepts (trust: the password is ignored)": (
            f"postgresql://postgres:{userinfo}@/{dbname}?host={socket_dir}&password={QUERY_SECRET}"
        ),
        "unreachable, password in user info": f"postgresql://app:{userinfo}@127.0.0.1:{port}/db",
        "unreachable, password in the query": (
            f"postgresql://app@127.0.0.1:{port}/db?password={QUERY_SECRET}&connect_timeout=2"
        ),
        "unreachable, both": f"postgresql://app:{userinfo}@127.0.0.1:{port}/db?password={QUERY_SECRET}",
        "password rejected (user info)": f"postgresql://{PW_ROLE}:{userinfo}@/postgres?host={socket_dir}",
        "password rejected (query)": (
            f"postgresql://{PW_ROLE}@/postgres?host={socket_dir}&password={QUERY_SECRET}"
        ),
        "malformed port": f"postgresql://app:{userinfo}@127.0.0.1:notaport/db",
        "malformed percent-encoding": f"postgresql://app:{SECRET}%zz@127.0.0.1:{port}/db",
        "malformed query": f"postgresql://app@127.0.0.1:{port}/db?password={QUERY_SECRET}%zz",
        "bad option beside it": (
            f"postgresql://app:{userinfo}@127.0.0.1:{port}/db?password={QUERY_SECRET}&sslmode=no"
        ),
        "bad host": f"postgresql://app:{userinfo}@../db?password={QUERY_SECRET}",
    }


@pytest.fixture
def root_log() -> Iterator[io.StringIO]:
    """Everything logged anywhere at DEBUG, formatted with arguments and tracebacks."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def exception_text(error: BaseException) -> str:
    """The error's str, repr and whole traceback, with every chained cause."""
    return "\n".join(
        [
            str(error),
            repr(error),
            *traceback.format_exception(type(error), error, error.__traceback__),
        ]
    )


def test_api_paths_never_show_the_password(
    password_server: tuple[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    root_log: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []  # everything a user could see
    failures = 0

    def attempt(what: str, fn: Callable[[], Any]) -> None:
        nonlocal failures
        try:
            result = fn()
        except ShareddbError as e:
            failures += 1
            seen.append(f"{what}: {exception_text(e)}")
        except Exception as e:
            pytest.fail(f"{what} raised {type(e).__name__}, not a ShareddbError: {e}")
        else:
            seen.append(f"{what}: {result!r}")

    for name, url in bad_urls(password_server).items():
        try:
            db = DbService(url, timeout=1)
        except ShareddbError as e:
            failures += 1
            seen.append(f"{name} DbService(): {exception_text(e)}")
            continue
        seen += [repr(db), db.url, str(parse_url(url)), repr(parse_url(url))]
        seen += [repr(SessionStorage(db)), repr(VectorStorage(db))]
        attempt(f"{name} open()", db.open)
        attempt(f"{name} initialize()", db.initialize)
        attempt(f"{name} migration_status()", db.migration_status)
        attempt(f"{name} connection()", lambda db=db: db.connection().__enter__())
        attempt(f"{name} sessions.list()", lambda db=db: SessionStorage(db).list())
        attempt(f"{name} vectors.count()", lambda db=db: VectorStorage(db).count())
        attempt(
            f"{name} vectors.upsert()",
            lambda db=db: VectorStorage(db).upsert("md#1", [1.0, 2.0, 3.0]),
        )
        attempt(f"{name} vectors.search()", lambda db=db: VectorStorage(db).search([1.0, 2.0, 3.0]))
        db.close()
        config = DbConfig(url=url)
        seen.append(repr(config))
        attempt(f"{name} get_shared_db()", lambda c=config: get_shared_db(c))
        attempt(f"{name} DbService.from_config()", lambda c=config: DbService.from_config(c))
        # The same url from the environment and from each place in a config file.
        monkeypatch.setenv("SHAREDDB_URL", url)
        attempt(f"{name} load_config(env)", load_config)
        monkeypatch.delenv("SHAREDDB_URL")
        for template in (
            "[db]\nurl = '{url}'\n",
            "[sessiondb]\nbackend = 'postgres'\n"
            "[sessiondb.postgres]\nconnection_string = '{url}'\n",
            "[db]\nurl = '{url}'\nbroken = 1\n",
        ):
            path = tmp_path / "config.toml"
            path.write_text(template.format(url=url))
            attempt(f"{name} load_config(file)", lambda p=path: load_config(p))
    close_shared_dbs()
    assert failures >= (len(bad_urls(password_server)) - 1) * 4
    records = [
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    ]
    everything = "\n".join([*seen, *records, root_log.getvalue()])
    assert "password authentication failed" in everything  # the server really said no
    assert "SearchResult(qualified_task_id='md#1'" in everything  # and the trusted url worked
    assert "is unreachable" in everything
    found = leaks(everything)
    if found:
        lines = [line for line in everything.splitlines() if leaks(line)]
        pytest.fail(f"password forms {found} leaked in:\n" + "\n".join(lines[:10]))


DEBUG_CLI = (
    "import logging, sys; logging.basicConfig(level=logging.DEBUG, "
    "format='%(name)s %(levelname)s %(message)s'); "
    "from shareddb.cli import main; sys.exit(main())"
)


CORE = (
    "server accepts (trust: the password is ignored)",
    "unreachable, password in user info",
    "unreachable, password in the query",
    "password rejected (user info)",
    "password rejected (query)",
)


def cli_runs(urls: dict[str, str], tmp_path: Path) -> list[tuple[str, list[str], dict[str, str]]]:
    """(label, argv, extra environment): every command with the core urls, a few with the rest.

    The url comes as --url, from a config file (--config) and from SHAREDDB_URL.
    """
    runs: list[tuple[str, list[str], dict[str, str]]] = []
    good = f"sqlite:///{tmp_path / 'good.db'}"
    for name, url in urls.items():
        core = name in CORE
        commands = (
            [
                ["init"],
                ["init", "--json"],
                ["status"],
                ["status", "--json"],
                ["doctor"],
                ["doctor", "--json"],
                ["config"],
                ["config", "--json"],
                ["pg", "status"],
            ]
            if core
            else [["init"], ["doctor"], ["config"]]
        )
        for command in commands:
            runs.append((f"{name}: {' '.join(command)} --url", [*command, "--url", url], {}))
        if core:
            runs.append((f"{name}: copy --from", ["copy", "--from", url, "--to", good], {}))
            runs.append((f"{name}: copy --to", ["copy", "--from", good, "--to", url, "--json"], {}))
        if name in CORE[1::2]:
            config = tmp_path / f"config-{len(runs)}.toml"
            config.write_text(f"[db]\nurl = '{url}'\n")
            runs.append((f"{name}: init --config", ["init", "-v", "--config", str(config)], {}))
            runs.append((f"{name}: doctor (env)", ["doctor", "-v"], {"SHAREDDB_URL": url}))
            runs.append((f"{name}: config (env)", ["config"], {"SHAREDDB_URL": url}))
    return runs


def test_cli_commands_never_show_the_password(
    password_server: tuple[str, str], tmp_path: Path
) -> None:
    urls = bad_urls(password_server)
    with DbService(f"sqlite:///{tmp_path / 'good.db'}") as good:
        good.initialize()
    runs = cli_runs(urls, tmp_path)

    def run(item: tuple[str, list[str], dict[str, str]]) -> tuple[str, int, str]:
        what, argv, env = item
        result = subprocess.run(
            [sys.executable, "-c", DEBUG_CLI, *argv, "--timeout", "2"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **env},
            check=False,
        )
        return what, result.returncode, result.stdout + result.stderr

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, runs))
    problems = []
    for what, code, output in results:
        if leaks(output):
            problems.append(f"{what}: leaked {leaks(output)}:\n{output[:2000]}")
        if "Traceback" in output:
            problems.append(f"{what}: traceback:\n{output[-2000:]}")
        if code not in (0, 1, 2):
            problems.append(f"{what}: exit status {code}")
    assert not problems, "\n\n".join(problems[:5])
    failed = sum(code != 0 for _, code, _ in results)
    assert failed >= len(runs) // 2, "most of these runs should fail"
    print(
        f"\ncli credential runs: {len(results)} ({failed} failed as expected); "
        f"urls: {', '.join(label(u) for u in urls)}"
    )
