-- Task embeddings: one vector per qualified task id ('md#253', 'gh#123').
--
-- `embedding` holds little-endian float32 values (4 bytes per dimension); searches are
-- exact, computed with numpy over a per-dimension matrix that VectorStorage caches in
-- memory. `backend` is the prefix of qualified_task_id before '#' unless set
-- explicitly. created_at / updated_at hold ISO-8601 UTC text with six fractional digits
-- ('2025-01-31T09:30:00.123456+00:00'), set by shareddb; an upsert moves updated_at.
-- AUTOINCREMENT: ids are never reused, so rows keep their insertion order.
CREATE TABLE task_embeddings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    qualified_task_id TEXT NOT NULL UNIQUE CHECK (qualified_task_id <> ''),
    backend TEXT NOT NULL,
    dimension INTEGER NOT NULL CHECK (dimension BETWEEN 1 AND 16000),
    embedding BLOB NOT NULL CHECK (typeof(embedding) = 'blob' AND length(embedding) = 4 * dimension),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE INDEX task_embeddings_dimension_backend_idx ON task_embeddings (dimension, backend);

-- A random token per table, replaced by every write: VectorStorage keeps its in-memory
-- matrices while the token is unchanged. Unlike PRAGMA data_version it sees this
-- connection's own writes, and unlike a counter it never returns to an old value
-- after a rollback.
CREATE TABLE IF NOT EXISTS shareddb_vector_versions (
    table_name TEXT NOT NULL PRIMARY KEY,
    token INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO shareddb_vector_versions (table_name, token) VALUES ('task_embeddings', random());

CREATE TRIGGER task_embeddings_version_insert AFTER INSERT ON task_embeddings
BEGIN
    UPDATE shareddb_vector_versions SET token = random() WHERE table_name = 'task_embeddings';
END;

CREATE TRIGGER task_embeddings_version_update AFTER UPDATE ON task_embeddings
BEGIN
    UPDATE shareddb_vector_versions SET token = random() WHERE table_name = 'task_embeddings';
END;

CREATE TRIGGER task_embeddings_version_delete AFTER DELETE ON task_embeddings
BEGIN
    UPDATE shareddb_vector_versions SET token = random() WHERE table_name = 'task_embeddings';
END;
