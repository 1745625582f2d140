"""The mixed workload of the load tests: sessions and embeddings, reads and writes.

Each worker owns the names and ids it writes (``<prefix>-<worker>-<n>``), remembers what
it stored, checks every read against that, and counts its successful writes, so that the
test can compare the final row counts with the number of writes that returned success.
"""

from __future__ import annotations

import random
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shareddb import DbService, SessionRecord, SessionStorage, VectorStorage

DIMENSION = 32


@dataclass
class Tally:
    """What the workers did: successful writes by kind, reads, and every error."""

    sessions_added: int = 0
    sessions_deleted: int = 0
    embeddings_added: int = 0
    embeddings_deleted: int = 0
    operations: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def sessions(self) -> int:
        return self.sessions_added - self.sessions_deleted

    @property
    def embeddings(self) -> int:
        return self.embeddings_added - self.embeddings_deleted

    @property
    def locked(self) -> int:
        return sum("locked" in e for e in self.errors)

    def merge(self, other: Tally) -> None:
        self.sessions_added += other.sessions_added
        self.sessions_deleted += other.sessions_deleted
        self.embeddings_added += other.embeddings_added
        self.embeddings_deleted += other.embeddings_deleted
        self.operations.update(other.operations)
        self.errors.extend(other.errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sessions_added": self.sessions_added,
            "sessions_deleted": self.sessions_deleted,
            "embeddings_added": self.embeddings_added,
            "embeddings_deleted": self.embeddings_deleted,
            "operations": dict(self.operations),
            "errors": self.errors,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        return cls(
            sessions_added=data["sessions_added"],
            sessions_deleted=data["sessions_deleted"],
            embeddings_added=data["embeddings_added"],
            embeddings_deleted=data["embeddings_deleted"],
            operations=Counter(data["operations"]),
            errors=list(data["errors"]),
        )


class _Worker:
    def __init__(self, db: DbService, name: str, seed: int) -> None:
        self.sessions = SessionStorage(db)
        self.vectors = VectorStorage(db)
        self.db = db
        self.name = name
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.n = 0
        self.my_sessions: dict[str, SessionRecord] = {}
        self.my_vectors: dict[str, np.ndarray[Any, Any]] = {}
        self.tally = Tally()

    def _next(self, kind: str) -> str:
        self.n += 1
        return f"{self.name}-{kind}{self.n}"

    def _vector(self) -> np.ndarray[Any, Any]:
        return self.np_rng.standard_normal(DIMENSION).astype(np.float32)

    def _record(self, name: str) -> SessionRecord:
        return SessionRecord(
            session=name,
            repo_name=f"repo-{self.rng.randrange(5)}",
            repo_url=f"https://example.org/{name}.git",
            branch=self.rng.choice([None, "main", f"fix/{name}"]),
            task_id=f"md#{self.rng.randrange(1000)}",
        )

    def _pick(self, pool: dict[str, Any]) -> str | None:
        return self.rng.choice(list(pool)) if pool else None

    # -- operations ------------------------------------------------------------------------

    def add_session(self) -> None:
        stored = self.sessions.add(self._record(self._next("s")))
        self.my_sessions[stored.session] = stored
        self.tally.sessions_added += 1

    def update_session(self) -> None:
        name = self._pick(self.my_sessions)
        if name is None:
            return self.add_session()
        new = self.sessions.update(name, branch=f"b{self.n}", task_id=f"gh#{self.n}")
        self.my_sessions[name] = new
        return None

    def read_session(self) -> None:
        name = self._pick(self.my_sessions)
        if name is None:
            return
        got = self.sessions.get(name)
        if got != self.my_sessions[name]:
            raise AssertionError(f"session {name!r} read back as {got!r}")

    def list_sessions(self) -> None:
        for record in self.sessions.list(repo_name=f"repo-{self.rng.randrange(5)}", limit=20):
            if record.session in self.my_sessions and record != self.my_sessions[record.session]:
                raise AssertionError(f"list() returned a stale {record!r}")

    def delete_session(self) -> None:
        name = self._pick(self.my_sessions)
        if name is None:
            return
        if not self.sessions.delete(name):
            raise AssertionError(f"delete({name!r}) found nothing")
        del self.my_sessions[name]
        self.tally.sessions_deleted += 1

    def add_embedding(self) -> None:
        task_id = self._next("md#")
        vector = self._vector()
        self.vectors.upsert(task_id, vector)
        self.my_vectors[task_id] = vector
        self.tally.embeddings_added += 1

    def replace_embedding(self) -> None:
        task_id = self._pick(self.my_vectors)
        if task_id is None:
            return self.add_embedding()
        vector = self._vector()
        self.vectors.upsert(task_id, vector)
        self.my_vectors[task_id] = vector
        return None

    def add_many(self) -> None:
        ids = [self._next("gh#") for _ in range(20)]
        matrix = self.np_rng.standard_normal((len(ids), DIMENSION)).astype(np.float32)
        self.vectors.upsert_many(list(zip(ids, matrix, strict=True)))
        self.my_vectors.update(zip(ids, matrix, strict=True))
        self.tally.embeddings_added += len(ids)

    def read_embedding(self) -> None:
        task_id = self._pick(self.my_vectors)
        if task_id is None:
            return
        got = self.vectors.get(task_id)
        if got is None or not np.array_equal(got, self.my_vectors[task_id]):
            raise AssertionError(f"embedding {task_id!r} read back as {got!r}")

    def search(self) -> None:
        task_id = self._pick(self.my_vectors)
        if task_id is None:
            return
        hits = self.vectors.search(self.my_vectors[task_id], k=3, exact=True)
        if not hits or hits[0].distance > 1e-4:
            raise AssertionError(f"search for {task_id!r}'s own embedding returned {hits!r}")

    def delete_embedding(self) -> None:
        task_id = self._pick(self.my_vectors)
        if task_id is None:
            return
        if not self.vectors.delete(task_id):
            raise AssertionError(f"delete({task_id!r}) found nothing")
        del self.my_vectors[task_id]
        self.tally.embeddings_deleted += 1

    def cross_domain(self) -> None:
        """A session and its embedding in one transaction."""
        record = self._record(self._next("x"))
        task_id = self._next("md#x")
        vector = self._vector()
        with self.db.transaction() as conn:
            stored = self.sessions.add(record, conn=conn)
            self.vectors.upsert(task_id, vector, conn=conn)
        self.my_sessions[stored.session] = stored
        self.my_vectors[task_id] = vector
        self.tally.sessions_added += 1
        self.tally.embeddings_added += 1

    def count(self) -> None:
        self.vectors.count(dimension=DIMENSION)

    OPERATIONS: tuple[tuple[str, int], ...] = (
        ("add_session", 8),
        ("update_session", 6),
        ("read_session", 12),
        ("list_sessions", 6),
        ("delete_session", 3),
        ("add_embedding", 8),
        ("replace_embedding", 5),
        ("add_many", 2),
        ("read_embedding", 12),
        ("search", 6),
        ("delete_embedding", 3),
        ("cross_domain", 3),
        ("count", 2),
    )

    def run(self, deadline: float) -> None:
        names = [name for name, _ in self.OPERATIONS]
        weights = [weight for _, weight in self.OPERATIONS]
        while time.monotonic() < deadline:
            op = self.rng.choices(names, weights)[0]
            try:
                getattr(self, op)()
            except Exception as e:  # every error counts; the test asserts there are none
                self.tally.errors.append(f"{op}: {type(e).__name__}: {e}")
            else:
                self.tally.operations[op] += 1

    def verify(self) -> None:
        """Everything this worker still owns reads back as it stored it."""
        for name, record in self.my_sessions.items():
            if self.sessions.get(name) != record:
                self.tally.errors.append(f"final: session {name!r} differs")
        for task_id, vector in self.my_vectors.items():
            got = self.vectors.get(task_id)
            if got is None or not np.array_equal(got, vector):
                self.tally.errors.append(f"final: embedding {task_id!r} differs")


def run_workload(db: DbService, *, workers: int, seconds: float, prefix: str) -> Tally:
    """`workers` threads on `db` for `seconds`; the merged tally."""
    deadline = time.monotonic() + seconds
    crew = [
        _Worker(db, f"{prefix}w{i}", seed=zlib.crc32(f"{prefix}w{i}".encode()))
        for i in range(workers)
    ]
    threads = [
        threading.Thread(target=w.run, args=(deadline,), name=w.name, daemon=True) for w in crew
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    tally = Tally()
    for w, t in zip(crew, threads, strict=True):
        if t.is_alive():
            tally.errors.append(f"worker {w.name} still running {seconds + 120} s after its end")
            continue
        w.verify()
        tally.merge(w.tally)
    return tally
