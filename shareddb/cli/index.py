"""``shareddb index``: list, build and drop the vector indexes of an embeddings table.

A thin layer over `VectorStorage.indexes` / `create_index` / `drop_index`: the
arguments are checked before the database is opened (bad ones exit 2), a build
shows the same progress lines as ``shareddb init``, and a problem the database
reports (a missing table, an unknown index, an index built with other parameters)
exits 1. SQLite has no vector indexes, as every search there is exact: ``list``
shows none, ``create`` and ``drop`` say so and exit 1, without opening the file.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from shareddb._admin.doctor import not_created
from shareddb._admin.progress import Progress
from shareddb._core.service import DbService
from shareddb._core.url import DbTarget, parse_url
from shareddb._vectors.request import (
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_M,
    IndexRequest,
    index_request,
)
from shareddb._vectors.validation import check_table_name, vector_index_name
from shareddb.cli.common import (
    EXIT_OK,
    UsageError,
    describe_index,
    duration,
    emit_json,
    service,
    target_url,
)
from shareddb.errors import InvalidArgumentError, ShareddbError
from shareddb.vectors import DEFAULT_TABLE, IndexInfo, VectorStorage

HELP = "list, build and drop vector indexes (PostgreSQL)"

SQLITE_EXACT = "SQLite has no vector indexes: every search there is exact (numpy over all rows)"


def add_arguments(parser: argparse.ArgumentParser, *parents: argparse.ArgumentParser) -> None:
    """The subcommands; `parents` (--url, --timeout, --json, …) go on each of them.

    On the subcommands, not on ``index`` itself: a subcommand's defaults would
    overwrite the values given before it (``shareddb index --url X list``).
    """
    actions = parser.add_subparsers(dest="action", required=True)
    table = argparse.ArgumentParser(add_help=False)
    table.add_argument(
        "--table",
        default=DEFAULT_TABLE,
        help="embeddings table (the layout of task_embeddings) [default: %(default)s]",
    )
    concurrently = argparse.ArgumentParser(add_help=False)
    concurrently.add_argument(
        "--concurrently",
        action="store_true",
        help="don't block writes to the table meanwhile (slower; PostgreSQL's CONCURRENTLY)",
    )
    actions.add_parser(
        "list", parents=[*parents, table], help="the table's vector indexes and their parameters"
    )
    create = actions.add_parser(
        "create",
        parents=[*parents, table, concurrently],
        help="build the index of one dimension and metric (if missing)",
    )
    create.add_argument(
        "--dimension", type=int, required=True, help="the embeddings' dimension to index"
    )
    create.add_argument(
        "--metric",
        choices=["cosine", "l2", "inner_product"],
        default="cosine",
        help="the distance searches will use [default: %(default)s]",
    )
    create.add_argument(
        "--method", choices=["hnsw", "ivfflat"], default="hnsw", help="[default: %(default)s]"
    )
    create.add_argument("--m", type=int, help=f"HNSW: neighbours per node [default: {DEFAULT_M}]")
    create.add_argument(
        "--ef-construction",
        type=int,
        help=f"HNSW: candidates while building [default: {DEFAULT_EF_CONSTRUCTION}]",
    )
    create.add_argument(
        "--lists", type=int, help="IVFFlat: lists [default: rows / 1000, at least 1]"
    )
    drop = actions.add_parser(
        "drop", parents=[*parents, table, concurrently], help="drop a vector index by name"
    )
    drop.add_argument("name", metavar="NAME", help="the index's name, as `index list` shows it")


def run(args: argparse.Namespace) -> int:
    table = _checked_table(args.table)
    # Check the arguments first: bad usage exits 2 before anything is opened.
    request = _checked_request(args) if args.action == "create" else None
    url, _ = target_url(args)
    target = parse_url(url)
    if target.engine == "sqlite":
        return _on_sqlite(args, target, table)
    if not_created(target):
        # Don't run initdb just to find no index there.
        raise ShareddbError(
            f"the embedded PostgreSQL in {target.embedded_dir} does not exist yet",
            fix="run: shareddb init",
        )
    with service(args, url) as db:
        vectors = _storage(db, table)
        if request is not None:
            return _create(args, vectors, request)
        if args.action == "drop":
            return _drop(args, vectors)
        return _list(args, vectors)


# -- the actions ---------------------------------------------------------------------------


def _list(args: argparse.Namespace, vectors: VectorStorage) -> int:
    indexes = vectors.indexes()
    if args.json:
        emit_json({**_where(vectors), "indexes": indexes})
        return EXIT_OK
    print(f"vector indexes of {vectors.table}")
    for index in indexes:
        print("  " + describe_index(index))
    if not indexes:
        print("  none (searches are exact sequential scans); build one: shareddb index create")
    return EXIT_OK


def _create(args: argparse.Namespace, vectors: VectorStorage, request: IndexRequest) -> int:
    name = vector_index_name(vectors.table, request.method, request.metric, request.dimension)
    existing = _find(vectors, name)  # create_index refuses one built with other parameters
    db = vectors.db
    progress = Progress(sys.stderr, detail=db.engine.index_build_progress)
    started = time.perf_counter()
    with progress:
        progress.step(f"building index {name}")
        vectors.create_index(
            request.dimension,
            method=request.method,
            metric=request.metric,
            m=request.m,
            ef_construction=request.ef_construction,
            lists=request.lists,
            concurrently=request.concurrently,
        )
    elapsed_ms = (time.perf_counter() - started) * 1000
    built = existing is None or not existing.valid
    index = _find(vectors, name)
    if args.json:
        emit_json(
            {**_where(vectors), "index": index, "built": built, "elapsed_ms": round(elapsed_ms, 1)}
        )
        return EXIT_OK
    if built:
        print(f"built index {name} in {duration(elapsed_ms)}")
    else:
        print(f"index {name} exists with these parameters; nothing to build")
    if index is not None:
        print("  " + describe_index(index))
    return EXIT_OK


def _drop(args: argparse.Namespace, vectors: VectorStorage) -> int:
    name: str = args.name
    indexes = vectors.indexes()
    if name not in {i.name for i in indexes}:
        # Checked here too (drop_index does) to point at the command, not at indexes().
        known = ", ".join(i.name for i in indexes) or "none"
        raise InvalidArgumentError(
            f"{name!r} is not a vector index of table {vectors.table} in {vectors.db.url} "
            f"(its vector indexes: {known})",
            fix="see: shareddb index list" + _table_option(vectors.table),
        )
    vectors.drop_index(name, concurrently=args.concurrently)
    if args.json:
        emit_json({**_where(vectors), "dropped": name})
    else:
        print(f"dropped index {name}")
    return EXIT_OK


def _on_sqlite(args: argparse.Namespace, target: DbTarget, table: str) -> int:
    """SQLite: nothing to list, build or drop; nothing is opened or created."""
    if args.action == "create":
        raise ShareddbError(
            f"{SQLITE_EXACT}, so there is no index to build for table {table} in {target.masked}",
            fix="nothing was changed (for approximate indexes, move the data to PostgreSQL: "
            "shareddb copy)",
        )
    if args.action == "drop":
        raise InvalidArgumentError(
            f"{args.name!r} is not a vector index of table {table} in {target.masked}: "
            f"{SQLITE_EXACT}",
            fix="see: shareddb index list" + _table_option(table),
        )
    if args.json:
        emit_json({"backend": "sqlite", "target": target.masked, "table": table, "indexes": []})
    else:
        print(f"vector indexes of {table}")
        print("  none (SQLite search is exact)")
    return EXIT_OK


# -- helpers -------------------------------------------------------------------------------


def _checked_table(name: str) -> str:
    try:
        return check_table_name(name)
    except InvalidArgumentError as e:
        raise UsageError(f"--table: {e}") from None


def _checked_request(args: argparse.Namespace) -> IndexRequest:
    """`create`'s options as an IndexRequest, or UsageError naming the option."""
    if args.method == "hnsw" and args.lists is not None:
        raise UsageError("--lists sets an IVFFlat index; add --method ivfflat or drop --lists")
    if args.method == "ivfflat":
        hnsw_only = (("--m", args.m), ("--ef-construction", args.ef_construction))
        given = [option for option, value in hnsw_only if value is not None]
        if given:
            raise UsageError(
                f"{' and '.join(given)} set an HNSW index, not IVFFlat; drop them or use "
                "--method hnsw (IVFFlat takes --lists)"
            )
    try:
        return index_request(
            args.dimension,
            args.method,
            args.metric,
            DEFAULT_M if args.m is None else args.m,
            DEFAULT_EF_CONSTRUCTION if args.ef_construction is None else args.ef_construction,
            args.lists,
            args.concurrently,
        )
    except InvalidArgumentError as e:
        raise UsageError(str(e)) from None


def _storage(db: DbService, table: str) -> VectorStorage:
    """The table's VectorStorage, or ShareddbError when the table does not exist."""
    engine = db.engine
    with engine.reading() as conn:
        exists = engine.table_exists(conn, table)
    if not exists:
        fix = (
            "run: shareddb init"
            if table == DEFAULT_TABLE
            else f"create it with VectorStorage(db, table={table!r}).create_table()"
        )
        raise InvalidArgumentError(f"table {table!r} does not exist in {db.url}", fix=fix)
    return VectorStorage(db, table=table)


def _find(vectors: VectorStorage, name: str) -> IndexInfo | None:
    return next((i for i in vectors.indexes() if i.name == name), None)


def _where(vectors: VectorStorage) -> dict[str, Any]:
    db = vectors.db
    return {"backend": db.get_backend_type(), "target": db.url, "table": vectors.table}


def _table_option(table: str) -> str:
    return "" if table == DEFAULT_TABLE else f" --table {table}"
