"""The store's tables: their DDL (with the migrations an old store needs), the answers
cache's insert, and the columns reports show."""

from __future__ import annotations

import contextlib

import duckdb

# The answer cache. No index: a PRIMARY KEY on request_key (an ART index) grew in memory with
# every stored answer (bench 6: a 1M-row run peaked at 410 MiB against 303 at 100k). key_hash,
# the key's first 60 bits, is the one column lookups and the duplicate check scan.
ANSWERS_DDL = """CREATE TABLE IF NOT EXISTS answers (
    request_key VARCHAR NOT NULL,
    key_hash BIGINT NOT NULL,
    output JSON NOT NULL,
    input_tokens BIGINT,
    output_tokens BIGINT,
    thinking_tokens BIGINT,
    cached_tokens BIGINT,
    job VARCHAR,
    row_id VARCHAR,
    created_at TIMESTAMPTZ
);"""
ANSWERS_COLUMNS = (
    "request_key, key_hash, output, input_tokens, output_tokens, thinking_tokens,"
    " cached_tokens, job, row_id, created_at"
)


def key_hash_sql(column: str) -> str:
    """SQL for a request key's key_hash: its first 15 hex digits (60 bits) as a BIGINT."""
    return f"CAST('0x' || substr({column}, 1, 15) AS BIGINT)"


SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS jobs (
    name VARCHAR PRIMARY KEY,
    spec JSON NOT NULL,
    spec_hash VARCHAR NOT NULL,
    task VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    state VARCHAR NOT NULL,
    message VARCHAR,
    rows_seen BIGINT DEFAULT 0,
    runs INTEGER DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    runner VARCHAR
);
CREATE TABLE IF NOT EXISTS results (
    job VARCHAR NOT NULL,
    row_id VARCHAR NOT NULL,
    pos VARCHAR,
    status VARCHAR NOT NULL,
    output JSON,
    error VARCHAR,
    attempts INTEGER,
    input_tokens BIGINT,
    output_tokens BIGINT,
    thinking_tokens BIGINT,
    cached_tokens BIGINT,
    cost_usd DECIMAL(38, 12),
    kept JSON,
    finished_at TIMESTAMPTZ,
    UNIQUE (job, row_id)
);
CREATE TABLE IF NOT EXISTS calls (
    job VARCHAR NOT NULL,
    call_id VARCHAR NOT NULL,
    row_ids VARCHAR[],
    attempt INTEGER,
    started_at TIMESTAMPTZ,
    latency_ms DOUBLE,
    http_status INTEGER,
    outcome VARCHAR,
    error VARCHAR,
    input_tokens BIGINT,
    output_tokens BIGINT,
    thinking_tokens BIGINT,
    cached_tokens BIGINT,
    cost_usd DECIMAL(38, 12),
    model VARCHAR,
    model_version VARCHAR,
    response_id VARCHAR,
    recovered BOOLEAN DEFAULT false,
    lane VARCHAR DEFAULT 'standard',
    pool VARCHAR
);
ALTER TABLE calls ADD COLUMN IF NOT EXISTS recovered BOOLEAN DEFAULT false;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS lane VARCHAR DEFAULT 'standard';
ALTER TABLE results ADD COLUMN IF NOT EXISTS answered_by VARCHAR;
ALTER TABLE results ADD COLUMN IF NOT EXISTS request_key VARCHAR;
ALTER TABLE results ADD COLUMN IF NOT EXISTS input_hash VARCHAR;
ALTER TABLE results ADD COLUMN IF NOT EXISTS from_cache BOOLEAN DEFAULT false;
ALTER TABLE results ADD COLUMN IF NOT EXISTS saved_usd DECIMAL(38, 12) DEFAULT 0;
ALTER TABLE results ADD COLUMN IF NOT EXISTS model VARCHAR;
"""
    + ANSWERS_DDL
    + """
ALTER TABLE calls ADD COLUMN IF NOT EXISTS pool VARCHAR;
CREATE TABLE IF NOT EXISTS batches (
    job VARCHAR NOT NULL,
    batch_id VARCHAR NOT NULL,
    provider_name VARCHAR,
    input_file VARCHAR,
    state VARCHAR NOT NULL,
    rows INTEGER,
    requests INTEGER,
    ok_rows INTEGER DEFAULT 0,
    retry_rows INTEGER DEFAULT 0,
    reserved_usd DECIMAL(38, 12),
    error VARCHAR,
    created_at TIMESTAMPTZ,
    submitted_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    closed BOOLEAN DEFAULT false,
    UNIQUE (job, batch_id)
);
CREATE TABLE IF NOT EXISTS batch_rows (
    job VARCHAR NOT NULL,
    batch_id VARCHAR NOT NULL,
    req INTEGER NOT NULL,
    row_id VARCHAR NOT NULL,
    pos VARCHAR,
    text VARCHAR,
    fields JSON,
    attempts INTEGER
);
"""
)


def key_answers_by_hash(con: duckdb.DuckDBPyConnection) -> None:
    """A store from before key_hash has `answers` under a VARCHAR PRIMARY KEY; DuckDB cannot
    drop a constraint, so the table is made again in today's layout and its rows copied."""
    keyed = con.execute(
        "SELECT count(*) FROM duckdb_columns() WHERE database_name = current_database()"
        " AND schema_name = 'main' AND table_name = 'answers' AND column_name = 'key_hash'"
    ).fetchall()[0][0]
    if keyed:
        return
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("ALTER TABLE answers RENAME TO answers_by_key")
        con.execute(ANSWERS_DDL)
        con.execute(
            f"INSERT INTO answers ({ANSWERS_COLUMNS}) SELECT request_key,"
            f" {key_hash_sql('request_key')}, output, input_tokens, output_tokens,"
            " thinking_tokens, cached_tokens, job, row_id, created_at FROM answers_by_key"
        )
        con.execute("DROP TABLE answers_by_key")
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise


# ok answers by request key; a copy stored in the same commit adds its share back, so the
# tokens are what one sending of the request took per row. Only a key whose sending is in
# this commit is kept (a copy answered later from a stored answer carries `answered_by`
# and no tokens): no anti-join against the stored answers, which scanned all of them on
# every commit, 7-10 ms a commit at 1M answers, and kept DuckDB's client taking the GIL
# back from the event loop once per chunk scanned. A key is sent once per job (dedupe) and
# a later job finds it in the cache, so a key is stored twice only by a race; the cache
# lookup takes either
KEEP_ANSWERS = (
    f"INSERT INTO answers ({ANSWERS_COLUMNS}) SELECT request_key,"
    f" {key_hash_sql('request_key')} AS key_hash, any_value(output), sum(input_tokens),"
    " sum(output_tokens), sum(thinking_tokens), sum(cached_tokens), any_value(job),"
    " min(row_id), ? FROM _results WHERE status = 'ok' AND request_key IS NOT NULL"
    " AND NOT from_cache GROUP BY request_key HAVING bool_or(answered_by IS NULL)"
)


# what `status` and the job page show of each batch of the Batch lane
BATCH_COLUMNS = (
    "batch_id",
    "provider_name",
    "state",
    "closed",
    "rows",
    "requests",
    "ok_rows",
    "retry_rows",
    "error",
    "created_at",
    "finished_at",
)
