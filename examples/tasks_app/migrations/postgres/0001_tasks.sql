-- tasks_app: one row per task. The same table as sqlite/0001_tasks.sql; the
-- per-engine folder lets PostgreSQL add what only it has (a GIN index on labels).
CREATE TABLE tasks (
    qualified_task_id TEXT PRIMARY KEY,  -- "md#253", "gh#123"
    title TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'doing', 'done')),
    labels JSONB NOT NULL DEFAULT '[]',
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX tasks_status_idx ON tasks (status, created_at);
CREATE INDEX tasks_labels_idx ON tasks USING gin (labels);
