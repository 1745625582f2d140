"""Child processes of the reliability suite: ``python rel_worker.py MODE ...``.

``migrate URL FOLDER``
    initialize() with the application migrations in FOLDER (namespace ``app``), logging
    each applied file on stderr, so that a test can SIGKILL it in the middle.
``load URL SECONDS SEED``
    the mixed session and embedding workload of `rel_load.run_workload` in this process;
    prints its tally as one JSON line on stdout.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rel_load import run_workload

from shareddb import DbService


def migrate(url: str, folder: str) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    with DbService(url, schema_dirs={"app": folder}) as db:
        print("initializing", file=sys.stderr, flush=True)
        db.initialize()
    return 0


def load(url: str, seconds: str, seed: str) -> int:
    with DbService(url, max_size=4) as db:
        tally = run_workload(db, workers=1, seconds=float(seconds), prefix=f"p{seed}")
    print(json.dumps(tally.as_dict()))
    return 0


def main(argv: list[str]) -> int:
    mode, *args = argv
    if mode == "migrate":
        return migrate(*args)
    if mode == "load":
        return load(*args)
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
