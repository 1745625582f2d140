-- Embedding records: what an application keeps beside each vector.
--
-- `metadata` is a JSON object (text) the application filters on (`search(where=...)`),
-- `content_hash` the hash of the text that was embedded (`stale()` finds the texts to embed
-- again) and `model` the model that made the vector. Rows written before this migration get
-- metadata '{}' and no hash or model; every other value stays as it was.
ALTER TABLE task_embeddings ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_type(metadata) = 'object');
ALTER TABLE task_embeddings ADD COLUMN content_hash TEXT;
ALTER TABLE task_embeddings ADD COLUMN model TEXT;
