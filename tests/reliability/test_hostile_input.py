"""Hostile input: every string a caller can pass, fed with injections and odd text.

Each call must either store the value and read it back unchanged, or refuse it with a
ShareddbError that says why; never a raw driver error or a crash. The database catalog
(tables, columns, indexes, constraints, triggers, functions, roles) must be the same
before and after.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rel_payloads import PAYLOADS, catalog, label

from shareddb import (
    DbService,
    SessionRecord,
    SessionStorage,
    ShareddbError,
    VectorStorage,
    load_config,
)
from shareddb._core.url import parse_url
from shareddb.cli import main as cli_main

pytestmark = pytest.mark.reliability

REFUSED = object()


@dataclass
class Outcomes:
    """Counts calls that stored or refused a payload, and every other outcome as a problem."""

    stored: int = 0
    refused: int = 0
    problems: list[str] = field(default_factory=list)

    def call(self, what: str, payload: str, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except ShareddbError as e:
            if not str(e).strip():
                self.problems.append(f"{what} {label(payload)}: {type(e).__name__} says nothing")
            self.refused += 1
            return REFUSED
        except Exception as e:
            self.problems.append(
                f"{what} {label(payload)}: {type(e).__module__}.{type(e).__name__}: "
                + " ".join(str(e).split())[:200]
            )
            return REFUSED
        self.stored += 1
        return result

    def expect(self, what: str, payload: str, ok: bool, detail: object = "") -> None:
        if not ok:
            self.problems.append(f"{what} {label(payload)}: {detail}")

    def check(self) -> None:
        assert not self.problems, f"{len(self.problems)} problems:\n" + "\n".join(
            self.problems[:40]
        )


def vector(i: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(i).standard_normal(8).astype(np.float32)


# -- sessions --------------------------------------------------------------------------------


def test_session_fields_and_filters_store_hostile_text_verbatim_or_refuse_it(
    db: DbService,
) -> None:
    before = catalog(db)
    sessions = SessionStorage(db)
    out = Outcomes()
    for i, p in enumerate(PAYLOADS):
        # The payload as the session's name.
        record = out.call(
            "SessionRecord(session=)",
            p,
            lambda p=p: SessionRecord(session=p, repo_name="r", repo_url="u"),
        )
        got = out.call("get()", p, lambda p=p: sessions.get(p))
        if record is not REFUSED:
            stored = out.call("add()", p, lambda r=record: sessions.add(r))
            if stored is not REFUSED:
                out.expect("get()", p, sessions.get(p) == stored, "read back differently")
                updated = out.call("update()", p, lambda p=p: sessions.update(p, branch="b"))
                out.expect("update()", p, updated is REFUSED or updated.branch == "b")
                out.expect("delete()", p, out.call("delete()", p, lambda p=p: sessions.delete(p)))
                out.expect("get()", p, sessions.get(p) is None, "still there after delete()")
        else:
            out.expect("get()", p, got is REFUSED or got is None, f"found {got!r}")
        # The payload in every other field, and as a filter.
        for name in ("repo_name", "repo_url", "branch", "task_id"):
            session = f"s{i}-{name}"
            fields = {"repo_name": "r", "repo_url": "u", name: p}
            record = out.call(
                f"SessionRecord({name}=)",
                p,
                lambda s=session, f=fields: SessionRecord(session=s, **f),
            )
            if record is REFUSED:
                continue
            stored = out.call("add()", p, lambda r=record: sessions.add(r))
            if stored is REFUSED:
                continue
            out.expect(f"get() {name}", p, sessions.get(session) == stored, "read back differently")
            out.call(
                f"update({name}=)", p, lambda s=session, n=name, p=p: sessions.update(s, **{n: p})
            )
        for name in ("repo_name", "task_id"):
            found = out.call(f"list({name}=)", p, lambda n=name, p=p: sessions.list(**{n: p}))
            if found is not REFUSED:
                out.expect(
                    f"list({name}=)", p, all(getattr(r, name) == p for r in found), found[:2]
                )
                out.expect(f"list({name}=)", p, len(found) >= (name == "repo_name"), "none found")
        out.call("get_by_task()", p, lambda p=p: sessions.get_by_task(p))
        # As the name of a field to update: never a valid one.
        stored_name = f"s{i}-repo_url"
        if sessions.get(stored_name) is None:
            stored_name = "probe"
            if sessions.get("probe") is None:
                sessions.add(SessionRecord(session="probe", repo_name="r", repo_url="u"))
        result = out.call(
            "update(**{field})", p, lambda s=stored_name, p=p: sessions.update(s, **{p: "x"})
        )
        out.expect("update(**{field})", p, result is REFUSED, "an unknown field was accepted")
    out.check()
    assert catalog(db) == before
    print(f"\nsessions {db.get_backend_type()}: {out.stored} stored, {out.refused} refused")


# -- embeddings ------------------------------------------------------------------------------


def test_task_ids_and_backend_filters_store_hostile_text_verbatim_or_refuse_it(
    db: DbService,
) -> None:
    before = catalog(db)
    vectors = VectorStorage(db)
    out = Outcomes()
    for i, p in enumerate(PAYLOADS):
        v = vector(i)
        # As a qualified task id, one at a time and in bulk.
        if out.call("upsert()", p, lambda p=p, v=v: vectors.upsert(p, v)) is not REFUSED:
            got = out.call("get()", p, lambda p=p: vectors.get(p))
            out.expect("get()", p, got is not REFUSED and np.array_equal(got, v), got)
            hits = out.call("search()", p, lambda v=v: vectors.search(v, k=1, exact=True))
            out.expect("search()", p, hits is not REFUSED and hits[0].qualified_task_id == p)
            out.expect("delete()", p, out.call("delete()", p, lambda p=p: vectors.delete(p)))
        else:
            got = out.call("get()", p, lambda p=p: vectors.get(p))
            out.expect("get()", p, got is REFUSED or got is None, got)
            out.call("delete()", p, lambda p=p: vectors.delete(p))
        for form, items in (
            ("pairs", lambda p=p, v=v: [(p, v)]),
            ("ids and matrix", lambda p=p, v=v: ([p], v.reshape(1, -1))),
        ):
            written = out.call(f"upsert_many({form})", p, lambda f=items: vectors.upsert_many(f()))
            if written is not REFUSED:
                got = vectors.get(p)
                out.expect(f"upsert_many({form})", p, got is not None and np.array_equal(got, v))
                vectors.delete(p)
        # As an explicit backend, then as the search filter.
        task_id = f"md#{i}"
        stored = out.call(
            "upsert(backend=)", p, lambda t=task_id, p=p, v=v: vectors.upsert(t, v, backend=p)
        )
        hits = out.call(
            "search(backend=)", p, lambda p=p, v=v: vectors.search(v, k=1, backend=p, exact=True)
        )
        if stored is not REFUSED:
            out.expect("search(backend=)", p, hits is not REFUSED and hits, hits)
            out.expect(
                "search(backend=)", p, hits is not REFUSED and hits[0].qualified_task_id == task_id
            )
        # As option values and index names: never valid ones.
        for what, fn in (
            ("search(metric=)", lambda p=p, v=v: vectors.search(v, metric=p)),
            ("create_index(method=)", lambda p=p: vectors.create_index(8, method=p)),
            ("create_index(metric=)", lambda p=p: vectors.create_index(8, metric=p)),
        ):
            out.expect(what, p, out.call(what, p, fn) is REFUSED, "accepted")
        out.call("drop_index()", p, lambda p=p: vectors.drop_index(p))
    out.check()
    assert vectors.count() == sum(
        1 for i, p in enumerate(PAYLOADS) if vectors.get(f"md#{i}") is not None
    )
    assert catalog(db) == before
    print(f"\nembeddings {db.get_backend_type()}: {out.stored} stored, {out.refused} refused")


def drop_table(db: DbService, table: str) -> None:
    with db.connection() as conn:
        quoted = '"' + table.replace('"', '""') + '"'
        conn.execute(f"DROP TABLE {quoted}" + (" CASCADE" if conn.__module__ != "sqlite3" else ""))


def test_table_names_are_refused_unless_a_plain_new_or_compatible_table(db: DbService) -> None:
    before = catalog(db)
    out = Outcomes()
    accepted: list[str] = []
    for i, p in enumerate(PAYLOADS):
        storage = out.call("VectorStorage(table=)", p, lambda p=p: VectorStorage(db, table=p))
        if storage is REFUSED:
            continue
        v = vector(i)
        created = out.call("create_table()", p, storage.create_table)
        if created is REFUSED:
            continue
        if p != "task_embeddings":
            accepted.append(p)
        out.call("upsert()", p, lambda s=storage, v=v: s.upsert("md#1", v))
        got = out.call("get()", p, lambda s=storage: s.get("md#1"))
        out.expect("get()", p, got is not REFUSED and np.array_equal(got, v), got)
        hits = out.call("search()", p, lambda s=storage, v=v: s.search(v, k=1))
        out.expect("search()", p, hits is not REFUSED and hits and hits[0].distance < 1e-5, hits)
        out.call("count()", p, storage.count)
        out.call("indexes()", p, storage.indexes)
        out.call("delete()", p, lambda s=storage: s.delete("md#1"))
    # A table that doesn't exist, or exists with another layout, is refused with the fix.
    for table in ("no_such_table", "sessions", "schema_migrations"):
        try:
            storage = VectorStorage(db, table=table)
        except ShareddbError:
            continue
        for what, fn in (
            ("upsert()", lambda s=storage: s.upsert("md#1", vector(1))),
            ("get()", lambda s=storage: s.get("md#1")),
            ("count()", lambda s=storage: s.count()),
            ("search()", lambda s=storage: s.search(vector(1))),
        ):
            out.expect(what, table, out.call(what, table, fn) is REFUSED, "accepted")
    out.check()
    for table in accepted:
        drop_table(db, table)
    assert catalog(db) == before
    print(f"\ntables {db.get_backend_type()}: {len(accepted)} accepted: {accepted}")


# -- namespaces, folders, config values, URLs -----------------------------------------------------


def test_migration_namespaces_and_folders_with_hostile_names(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "0001_probe.sql").write_text("SELECT 1;\n")
    out = Outcomes()
    with DbService(db_url) as db:
        db.initialize()
        before = catalog(db)
        for p in PAYLOADS:
            service = out.call(
                "DbService(schema_dirs=)", p, lambda p=p: DbService(db_url, schema_dirs={p: folder})
            )
            if service is REFUSED:
                continue
            with service:
                report = out.call("initialize()", p, service.initialize)
                if report is REFUSED:
                    continue
                out.expect("initialize()", p, [m.namespace for m in report.applied] == [p], report)
                status = [m for m in service.migration_status() if m.namespace == p]
                out.expect("migration_status()", p, [m.state for m in status] == ["applied"])
        for i, p in enumerate(PAYLOADS):
            # The payload as (part of) the folder of a namespace.
            where = tmp_path / "dirs" / f"d{i}" / p
            with contextlib.suppress(OSError, ValueError):
                where.mkdir(parents=True)
                (where / "0001_probe.sql").write_text("SELECT 1;\n")
            service = DbService(db_url, schema_dirs={f"folder{i}": str(where)})
            with service:
                out.call("initialize(folder)", p, service.initialize)
        assert catalog(db) == before
    out.check()


def toml_string(text: str) -> str:
    """A TOML basic string; lone surrogates become escapes that TOML itself refuses."""
    parts = ['"']
    for ch in text:
        if ch in '"\\':
            parts.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF:
            parts.append(f"\\u{ord(ch):04x}")
        else:
            parts.append(ch)
    parts.append('"')
    return "".join(parts)


CONFIG_TEMPLATES = (
    "[db]\nurl = {value}\n",
    "[sessiondb]\nbackend = {value}\n",
    '[sessiondb]\nbackend = "sqlite"\n[sessiondb.sqlite]\npath = {value}\n',
    '[sessiondb]\nbackend = "postgres"\n[sessiondb.postgres]\nconnection_string = {value}\n',
    "[sessiondb.postgres]\nembedded = true\ndata_dir = {value}\n",
    "[db]\nurl = {url}\n",
    '[{key}]\nurl = "sqlite:///x.db"\n',
)


def test_config_values_are_loaded_verbatim_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = Outcomes()
    path = tmp_path / "config.toml"
    default_url = load_config().url
    for p in PAYLOADS:
        for template in CONFIG_TEMPLATES:
            text = template.format(
                value=toml_string(p),
                url=toml_string(f"postgresql://u:{p}@localhost:5432/db"),
                key=toml_string(p),
            )
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
            config = out.call("load_config()", p, lambda: load_config(path))
            if config is REFUSED:
                continue
            target = out.call("parse_url(config.url)", p, lambda c=config: parse_url(c.url))
            if "path = " in template and target is not REFUSED:
                expected = Path(p).expanduser()
                expected = expected if expected.is_absolute() else tmp_path / expected
                out.expect("sqlite path", p, target.sqlite_path == expected, target.sqlite_path)
            if "data_dir" in template and target is not REFUSED:
                out.expect("data_dir", p, target.embedded_dir == tmp_path / p, target.embedded_dir)
        # The environment variable, where the OS can hold the value.
        if "\x00" not in p and not any(0xD800 <= ord(c) <= 0xDFFF for c in p):
            monkeypatch.setenv("SHAREDDB_URL", p)
            config = out.call("load_config() with SHAREDDB_URL", p, load_config)
            # An empty variable counts as unset.
            expected = p or default_url
            out.expect("SHAREDDB_URL", p, config is REFUSED or config.url == expected, config)
            monkeypatch.delenv("SHAREDDB_URL")
    out.check()
    print(f"\nconfig: {out.stored} loaded, {out.refused} refused")


def url_variants(p: str, port: int) -> Iterator[str]:
    yield p
    yield f"sqlite:///{p}"
    yield f"postgresql://u:{p}@127.0.0.1:{port}/db"
    yield f"postgresql://{p}@127.0.0.1:{port}/db"
    yield f"postgresql://u@127.0.0.1:{port}/{p}"
    yield f"postgresql://u@127.0.0.1:{port}/db?application_name={p}"
    yield f"postgresql://u@127.0.0.1:{port}/db?password={p}"
    yield f"postgresql+embedded:///{p}"


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_urls_open_or_are_refused_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "a" / "b" / "c" / "cwd"  # relative SQLite paths with ../ stay in tmp_path
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    port = closed_port()
    out = Outcomes()
    for p in PAYLOADS:
        for url in url_variants(p, port):
            if url.startswith("postgresql+embedded:") and "\x00" not in url:
                # Don't start servers in odd folders: parsing is what is under test here.
                out.call("parse_url()", p, lambda u=url: parse_url(u))
                continue
            service = out.call("DbService(url)", p, lambda u=url: DbService(u, timeout=1))
            if service is REFUSED:
                continue
            out.call("repr()", p, lambda s=service: repr(s))
            opened = out.call("open()", p, service.open)
            if opened is REFUSED:
                continue
            try:
                out.call("initialize()", p, service.initialize)
                sessions = SessionStorage(service)
                stored = out.call(
                    "add()",
                    p,
                    lambda s=sessions, u=url: s.add(
                        SessionRecord(session="s", repo_name="r", repo_url=u)
                    ),
                )
                if stored is not REFUSED:
                    got = sessions.get("s")
                    out.expect("get()", p, got is not None and got.repo_url == url, got)
            finally:
                service.close()
    out.check()
    print(f"\nurls: {out.stored} calls succeeded, {out.refused} refused")


def test_cli_arguments_never_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hostile --url, --schema-dir and --config values end in a message and exit status."""
    cwd = tmp_path / "a" / "b" / "c" / "cwd"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "0001_probe.sql").write_text("SELECT 1;\n")
    port = closed_port()
    good = f"sqlite:///{tmp_path / 'cli.db'}"
    problems: list[str] = []
    runs = 0
    for p in PAYLOADS:
        for argv in (
            ["config", "--url", f"sqlite:///{p}"],
            ["status", "--url", f"postgresql://u:{p}@127.0.0.1:{port}/db", "--timeout", "1"],
            ["init", "--url", good, "--schema-dir", f"{p}={folder}"],
            ["doctor", "--url", good, "--schema-dir", f"app={p}"],
            ["config", "--config", p],
        ):
            stdout, stderr = io.StringIO(), io.StringIO()
            runs += 1
            try:
                with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                    code = cli_main(argv)
            except SystemExit as e:  # argparse's own usage errors
                code = e.code if isinstance(e.code, int) else 2
            except Exception as e:
                problems.append(f"{argv[0]} {label(p)}: {type(e).__name__}: {e}"[:300])
                continue
            if code not in (0, 1, 2):
                problems.append(f"{argv[0]} {label(p)}: exit status {code}")
            if code and "Traceback" in stderr.getvalue():
                problems.append(f"{argv[0]} {label(p)}: traceback")
    assert not problems, "\n".join(problems[:40])
    print(f"\ncli: {runs} runs")
