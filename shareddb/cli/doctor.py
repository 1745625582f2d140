"""``shareddb doctor``: check every prerequisite and print the fix for each failure."""

from __future__ import annotations

import argparse

from shareddb._admin.doctor import Doctor
from shareddb.cli.common import EXIT_OK, EXIT_PROBLEM, checked_url, emit_json, plural, schema_dirs

_MARKS = {"ok": "[ok]  ", "warn": "[warn]", "fail": "[FAIL]", "skip": "[skip]"}


HELP = "check every prerequisite and print the fix for each failure"


def run(args: argparse.Namespace) -> int:
    if args.url:
        checked_url(args.url)
    doctor = Doctor(args.url, args.config, schema_dirs=schema_dirs(args), timeout=args.timeout)
    doctor.run()
    failed = [c for c in doctor.checks if c.state == "fail"]
    if args.json:
        emit_json({"ok": not failed, "checks": doctor.checks})
        return EXIT_PROBLEM if failed else EXIT_OK
    for c in doctor.checks:
        print(f"{_MARKS[c.state]} {c.name}: {c.detail}")
        if c.fix and c.state in ("fail", "warn"):
            print(f"       fix: {c.fix}")
    print(f"{plural(len(failed), 'check')} failed" if failed else "all checks passed")
    return EXIT_PROBLEM if failed else EXIT_OK
