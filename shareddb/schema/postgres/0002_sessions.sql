-- Sessions: one row per named working session of the application.
-- created_at / updated_at are set by shareddb (UTC, microseconds); seq records insertion
-- order so that sessions created in the same microsecond still list newest first.
CREATE TABLE sessions (
    session text PRIMARY KEY CHECK (session <> ''),
    repo_name text NOT NULL,
    repo_url text NOT NULL,
    branch text,
    task_id text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    CONSTRAINT sessions_updated_after_created CHECK (updated_at >= created_at)
);

CREATE INDEX sessions_task_id_idx ON sessions (task_id);
CREATE INDEX sessions_repo_name_idx ON sessions (repo_name);
-- list() reads newest first: ORDER BY created_at DESC, seq DESC.
CREATE INDEX sessions_created_at_idx ON sessions (created_at, seq);
