-- tasks_app: one row per task. The declared types are shareddb's portable ones
-- (README "Portable SQL"): db.query() brings JSONB back as lists/dicts and
-- TIMESTAMPTZ as aware datetimes in UTC, on SQLite as on PostgreSQL.
CREATE TABLE tasks (
    qualified_task_id TEXT PRIMARY KEY,  -- "md#253", "gh#123"
    title TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'doing', 'done')),
    labels JSONB NOT NULL DEFAULT '[]',
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX tasks_status_idx ON tasks (status, created_at);
