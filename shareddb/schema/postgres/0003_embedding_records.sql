-- Embedding records: what an application keeps beside each vector.
--
-- `metadata` is a JSON object the application filters on (`search(where=...)`), `content_hash`
-- the hash of the text that was embedded (`stale()` finds the texts to embed again) and
-- `model` the model that made the vector. Rows written before this migration get metadata
-- '{}' and no hash or model; every other value stays as it was (a column with a constant
-- default is added without rewriting the table).
ALTER TABLE task_embeddings
    ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN content_hash text,
    ADD COLUMN model text,
    ADD CONSTRAINT task_embeddings_metadata_check CHECK (jsonb_typeof(metadata) = 'object');

-- Metadata filters: equality and $in are containment tests (metadata @> '{"k": v}') that
-- this index answers, so a selective filter need not scan the table.
CREATE INDEX task_embeddings_metadata_idx ON task_embeddings USING gin (metadata jsonb_path_ops);
