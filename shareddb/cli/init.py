"""``shareddb init``: apply pending migrations, with progress lines while one runs long."""

from __future__ import annotations

import argparse
import sys
import time

from shareddb._admin.progress import Progress
from shareddb._core.service import DbService
from shareddb._core.url import parse_url
from shareddb._migrations.ledger import AppliedMigration
from shareddb.cli.common import EXIT_OK, duration, emit_json, plural, service, target_url

HELP = "apply pending migrations"


def run(args: argparse.Namespace) -> int:
    url, config = target_url(args)
    with service(args, url, config) as db:
        if not args.json:
            print(f"database: {_describe_target(db)}")
        before = db.migration_status()
        pending = [f"{m.namespace}/{m.name}" for m in before if m.state == "pending"]
        printed: set[str] = set()
        progress = Progress(sys.stderr, detail=db.engine.index_build_progress)

        def on_applied(migration: AppliedMigration) -> None:
            label = f"{migration.namespace}/{migration.name}"
            printed.add(label)
            if not args.json:
                print(f"applied {label} ({duration(migration.execution_ms)})", flush=True)
            rest = [p for p in pending if p not in printed]
            progress.step(f"applying {rest[0]}" if rest else "finishing")

        started = time.perf_counter()
        with progress:
            progress.step(f"applying {pending[0]}" if pending else "checking the schema")
            report = db.initialize(on_applied=on_applied)
        total_ms = (time.perf_counter() - started) * 1000
        if args.json:
            emit_json(
                {
                    "database": db.url,
                    "backend": db.get_backend_type(),
                    "applied": report.applied,
                    "up_to_date": report.up_to_date,
                    "pgvector": db.pgvector_version,
                    "elapsed_ms": round(total_ms, 1),
                }
            )
            return EXIT_OK
        if report.up_to_date:
            print(f"up to date ({plural(sum(1 for m in before if m.applied), 'migration')})")
        else:
            print(f"{plural(len(report.applied), 'migration')} applied in {duration(total_ms)}")
    return EXIT_OK


def _describe_target(db: DbService) -> str:
    target = parse_url(db.url)
    if target.embedded_dir is not None:
        return f"{db.url} (embedded PostgreSQL in {target.embedded_dir})"
    return f"{db.url} ({db.get_backend_type()})"
