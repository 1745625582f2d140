"""The optional peer libraries the scripts compare shareddb with (langchain-postgres).

They come from ``bench/requirements-peers.txt``; a script without them skips that client.
"""

from __future__ import annotations

import sys
from typing import Any

PEERS_HINT = "pip install -r bench/requirements-peers.txt"


def optional_import(module: str, purpose: str) -> Any | None:
    """The module, or None after printing why `purpose` is skipped."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        print(f"skipping {purpose}: {e}; install it with: {PEERS_HINT}", file=sys.stderr)
        return None


LANGCHAIN_STRATEGY = {"cosine": "COSINE", "l2": "EUCLIDEAN", "inner_product": "MAX_INNER_PRODUCT"}


class _NoEmbeddings:
    """langchain's PGVector wants an Embeddings object; the bench hands it vectors directly."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError("the bench passes embeddings, never texts")

    def embed_query(self, text: str) -> list[float]:
        raise NotImplementedError("the bench passes embeddings, never texts")


def langchain_store(url: str, metric: str, *, settings: dict[str, str] | None = None) -> Any:
    """A langchain-postgres PGVector on `url` (no embedding_length: any dimension).

    `settings` are session settings (``{"hnsw.ef_search": "40"}``) applied to every
    connection its engine opens, the way an application would tune it.
    """
    import sqlalchemy
    from langchain_postgres import PGVector
    from langchain_postgres.vectorstores import DistanceStrategy

    engine = sqlalchemy.create_engine(sqlalchemy_url(url))
    if settings:

        @sqlalchemy.event.listens_for(engine, "connect")
        def _configure(dbapi_conn: Any, _record: Any) -> None:
            with dbapi_conn.cursor() as cur:
                for name, value in settings.items():
                    cur.execute(f"SET {name} = {int(value)}")
            dbapi_conn.commit()

    return PGVector(
        _NoEmbeddings(),  # type: ignore[arg-type]
        connection=engine,
        collection_name="bench",
        distance_strategy=getattr(DistanceStrategy, LANGCHAIN_STRATEGY[metric]),
        use_jsonb=True,
    )


def close_langchain(store: Any) -> None:
    """Return a PGVector's connections: its scoped session and its engine's pool."""
    store.session_maker.remove()
    store._engine.dispose()


def sqlalchemy_url(url: str) -> str:
    """A libpq URI as SQLAlchemy's psycopg 3 URL."""
    scheme, rest = url.split("://", 1)
    return f"postgresql+psycopg://{rest}" if scheme in ("postgresql", "postgres") else url
