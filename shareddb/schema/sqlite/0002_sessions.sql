-- Sessions: one row per named working session of the application.
-- created_at / updated_at hold ISO-8601 UTC text with six fractional digits
-- ('2025-01-31T09:30:00.123456+00:00'): fixed width, so text order is time order.
-- seq records insertion order (shareddb writes max(seq) + 1 under the write lock) so
-- that sessions created in the same microsecond still list newest first; an explicit
-- column, because VACUUM may renumber the rowid of a table without INTEGER PRIMARY KEY.
CREATE TABLE sessions (
    session TEXT NOT NULL PRIMARY KEY CHECK (session <> ''),
    repo_name TEXT NOT NULL,
    repo_url TEXT NOT NULL,
    branch TEXT,
    task_id TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    seq INTEGER NOT NULL UNIQUE,
    CONSTRAINT sessions_updated_after_created CHECK (updated_at >= created_at)
);

CREATE INDEX sessions_task_id_idx ON sessions (task_id);
CREATE INDEX sessions_repo_name_idx ON sessions (repo_name);
-- list() reads newest first: ORDER BY created_at DESC, seq DESC.
CREATE INDEX sessions_created_at_idx ON sessions (created_at, seq);
