-- The contract's one table. `key` is UNIQUE so that writes are a single atomic upsert.
CREATE TABLE IF NOT EXISTS kv (
    id    INTEGER PRIMARY KEY,
    key   TEXT    NOT NULL UNIQUE,
    value REAL    NOT NULL
);
