"""SQLite migrations: numbered functions, applied in order when a store opens.

Each runs inside the opening transaction and is recorded in
`schema_migrations`, so a half-applied migration never persists. Add new ones
at the end; never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import apsw

#: Stands in for "still valid" in the vector table, so validity compares without NULL checks.
OPEN_END = (1 << 62) - 1


@dataclass(frozen=True)
class SchemaContext:
    dimensions: int
    #: (partition, current) -> the keyword prefix of that partition's terms.
    term_prefix: Callable[[str, bool], str]


def _m001_core(db: apsw.Connection, ctx: SchemaContext) -> None:
    db.execute(
        """
        CREATE TABLE memories (
            rowid INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            tenant_id TEXT NOT NULL,
            user_id TEXT,
            agent_id TEXT,
            run_id TEXT,
            lineage_id TEXT NOT NULL,
            text TEXT NOT NULL,
            category TEXT,
            metadata TEXT NOT NULL DEFAULT '{}',
            hash TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            valid_from INTEGER NOT NULL,
            valid_to INTEGER,
            superseded_by TEXT,
            source_message_ids TEXT NOT NULL DEFAULT '[]',
            access_count INTEGER NOT NULL DEFAULT 0,
            last_accessed_at INTEGER,
            expires_at INTEGER
        );
        CREATE INDEX memories_user ON memories (tenant_id, user_id, rowid);
        CREATE INDEX memories_agent ON memories (tenant_id, agent_id, rowid);
        CREATE INDEX memories_run ON memories (tenant_id, run_id, rowid);
        CREATE INDEX memories_lineage ON memories (lineage_id);
        CREATE INDEX memories_hash ON memories (tenant_id, hash);

        CREATE TABLE memory_events (
            rowid INTEGER PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            memory_id TEXT NOT NULL,
            lineage_id TEXT NOT NULL,
            user_id TEXT,
            agent_id TEXT,
            run_id TEXT,
            event TEXT NOT NULL,
            old_text TEXT,
            new_text TEXT,
            reason TEXT,
            actor TEXT NOT NULL,
            source_message_ids TEXT NOT NULL DEFAULT '[]',
            created_at INTEGER NOT NULL
        );
        CREATE INDEX memory_events_lineage ON memory_events (lineage_id, rowid);
        CREATE INDEX memory_events_memory ON memory_events (memory_id);

        CREATE TABLE messages (
            rowid INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            tenant_id TEXT NOT NULL,
            user_id TEXT,
            agent_id TEXT,
            run_id TEXT,
            role TEXT NOT NULL,
            name TEXT,
            content TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at INTEGER NOT NULL
        );
        CREATE INDEX messages_user ON messages (tenant_id, user_id, rowid);
        CREATE INDEX messages_agent ON messages (tenant_id, agent_id, rowid);
        CREATE INDEX messages_run ON messages (tenant_id, run_id, rowid);

        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            user_id TEXT,
            agent_id TEXT,
            run_id TEXT,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL DEFAULT 5,
            run_after INTEGER NOT NULL,
            locked_until INTEGER,
            last_error TEXT,
            result TEXT,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        );
        CREATE INDEX jobs_due ON jobs (status, run_after);
        CREATE INDEX jobs_scope ON jobs (tenant_id, user_id);

        CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """
    )


def _m002_indexes(db: apsw.Connection, ctx: SchemaContext) -> None:
    # One vector per memory version; searched in numpy per (tenant, user) partition (see vector_index.py).
    db.execute(
        """
        CREATE TABLE memory_vectors (
            memory_rowid INTEGER PRIMARY KEY,
            partition TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            run_id TEXT NOT NULL,
            valid_from INTEGER NOT NULL,
            valid_to INTEGER NOT NULL,
            embedding BLOB NOT NULL
        );
        CREATE INDEX memory_vectors_partition ON memory_vectors (partition);
        CREATE TABLE partition_versions (partition TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID;
        """
    )
    # Keyword terms are stored pre-tokenised with a per-partition prefix (see
    # SQLiteStore._terms), so one user's query reads only that user's postings.
    db.execute(
        """
        CREATE VIRTUAL TABLE memory_fts USING fts5(
            terms, content='', contentless_delete=1, tokenize='unicode61 remove_diacritics 0'
        );
        """
    )


def _m003_event_scope_indexes(db: apsw.Connection, ctx: SchemaContext) -> None:
    # delete_all(scope) deletes events by scope; without these it scans every event.
    db.execute(
        """
        CREATE INDEX memory_events_user ON memory_events (tenant_id, user_id);
        CREATE INDEX memory_events_agent ON memory_events (tenant_id, agent_id);
        CREATE INDEX memory_events_run ON memory_events (tenant_id, run_id);
        CREATE INDEX memory_events_tenant_lineage ON memory_events (tenant_id, lineage_id);
        """
    )


def _m004_api_keys(db: apsw.Connection, ctx: SchemaContext) -> None:
    db.execute(
        """
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            secret_hash TEXT NOT NULL UNIQUE,
            admin INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            revoked_at INTEGER
        );
        CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);
        CREATE INDEX jobs_status ON jobs (status);
        """
    )


def _m005_index_text_and_keyword_stats(db: apsw.Connection, ctx: SchemaContext) -> None:
    # `index_text`: what is embedded and keyword-indexed when it differs from the returned text
    # (a verbatim turn indexed with its speaker and the turns before it). NULL means `text`.
    # `keyword_stats`: documents and tokens per keyword prefix (partition x current/historic), kept
    # in the write transaction, so BM25 takes N and the average length from the user's own rows.
    db.execute(
        """
        ALTER TABLE memories ADD COLUMN index_text TEXT;
        CREATE TABLE keyword_stats (prefix TEXT PRIMARY KEY, docs INTEGER NOT NULL, tokens INTEGER NOT NULL)
            WITHOUT ROWID;
        CREATE VIRTUAL TABLE memory_fts_vocab USING fts5vocab(memory_fts, row);
        """
    )
    tokenizer = db.fts5_tokenizer("porter", ["unicode61", "remove_diacritics", "2"])
    stats: dict[str, list[int]] = {}
    for tenant_id, user_id, text, valid_to in db.execute("SELECT tenant_id, user_id, text, valid_to FROM memories"):
        prefix = ctx.term_prefix(f"{tenant_id}\x1f{user_id or ''}", valid_to is None)
        tokens = list(tokenizer(str(text).encode(), apsw.FTS5_TOKENIZE_DOCUMENT, None, include_offsets=False))
        entry = stats.setdefault(prefix, [0, 0])
        entry[0] += 1
        entry[1] += len(tokens)
    db.executemany("INSERT INTO keyword_stats VALUES (?, ?, ?)", [(k, d, t) for k, (d, t) in stats.items()])


#: Marks a partition changed by more than additions: its version moves on and `reset` with it.
_RESET_PARTITION = (
    "INSERT INTO partition_versions (partition, version, reset) VALUES ({partition}, 1, 1) "
    "ON CONFLICT (partition) DO UPDATE SET version = version + 1, reset = version + 1;"
)


def _m006_partition_resets(db: apsw.Connection, ctx: SchemaContext) -> None:
    # `reset`: the version of the partition's last change that did more than add memories. A process
    # whose cached copy of a partition (vector_index.py, keyword_index.py) has the current `reset` reads
    # only the rows added since; otherwise it reads the partition again. Triggers set it, so every
    # statement that ends, rewrites or deletes a memory or its vector marks it, whatever code runs it
    # (also a process of an older Retain that shares the file). Writes that only touch bookkeeping
    # columns (updated_at, access counts) do not change what is cached and fire nothing.
    memory_partition = "{row}.tenant_id || char(31) || coalesce({row}.user_id, '')"
    cached_columns = (
        "tenant_id, user_id, agent_id, run_id, text, index_text, metadata, valid_from, valid_to, expires_at"
    )
    db.execute(
        f"""
        ALTER TABLE partition_versions ADD COLUMN reset INTEGER NOT NULL DEFAULT 0;
        CREATE TRIGGER memories_reset_on_update AFTER UPDATE OF {cached_columns} ON memories BEGIN
            {_RESET_PARTITION.format(partition=memory_partition.format(row="old"))}
            {_RESET_PARTITION.format(partition=memory_partition.format(row="new"))}
        END;
        CREATE TRIGGER memories_reset_on_delete AFTER DELETE ON memories BEGIN
            {_RESET_PARTITION.format(partition=memory_partition.format(row="old"))}
        END;
        CREATE TRIGGER memory_vectors_reset_on_update AFTER UPDATE ON memory_vectors BEGIN
            {_RESET_PARTITION.format(partition="old.partition")}
            {_RESET_PARTITION.format(partition="new.partition")}
        END;
        CREATE TRIGGER memory_vectors_reset_on_delete AFTER DELETE ON memory_vectors BEGIN
            {_RESET_PARTITION.format(partition="old.partition")}
        END;
        """
    )


#: Marks a partition whose rows were only ended (their `valid_to` set): its version moves on and `ended`.
_END_IN_PARTITION = (
    "INSERT INTO partition_versions (partition, version, reset, ended) VALUES ({partition}, 1, 0, 1) "
    "ON CONFLICT (partition) DO UPDATE SET version = version + 1, ended = version + 1;"
)


def _m007_partition_endings(db: apsw.Connection, ctx: SchemaContext) -> None:
    # `ended`: the version of the partition's last change that ended memories (superseded or deleted them,
    # which sets `valid_to`) without changing anything else cached. A cached copy then re-reads only the
    # validity of its rows instead of the partition (vector_index.py): the chat loop ends memories often.
    # Changes to any other cached column still mark `reset`, and so does a change of both.
    memory_partition = "old.tenant_id || char(31) || coalesce(old.user_id, '')"
    memory_columns = "tenant_id, user_id, agent_id, run_id, text, index_text, metadata, valid_from, expires_at"
    vector_columns = "memory_rowid, partition, agent_id, run_id, valid_from, embedding"

    def changed(columns: str) -> str:
        return " OR ".join(f"old.{c} IS NOT new.{c}" for c in columns.split(", "))

    # The validity of a partition's rows is then read from an index (10k rows: the table's rows hold the
    # vectors, 1.6 kB each), which also serves what the partition index did.
    db.execute(
        f"""
        CREATE INDEX memory_vectors_validity ON memory_vectors (partition, memory_rowid, valid_to);
        DROP INDEX memory_vectors_partition;
        ALTER TABLE partition_versions ADD COLUMN ended INTEGER NOT NULL DEFAULT 0;
        DROP TRIGGER memories_reset_on_update;
        CREATE TRIGGER memories_reset_on_update AFTER UPDATE OF {memory_columns} ON memories
        WHEN {changed(memory_columns)} BEGIN
            {_RESET_PARTITION.format(partition=memory_partition)}
            {_RESET_PARTITION.format(partition=memory_partition.replace("old.", "new."))}
        END;
        CREATE TRIGGER memories_ended_on_update AFTER UPDATE OF valid_to ON memories
        WHEN old.valid_to IS NOT new.valid_to BEGIN
            {_END_IN_PARTITION.format(partition=memory_partition)}
        END;
        DROP TRIGGER memory_vectors_reset_on_update;
        CREATE TRIGGER memory_vectors_reset_on_update AFTER UPDATE OF {vector_columns} ON memory_vectors
        WHEN {changed(vector_columns)} BEGIN
            {_RESET_PARTITION.format(partition="old.partition")}
            {_RESET_PARTITION.format(partition="new.partition")}
        END;
        CREATE TRIGGER memory_vectors_ended_on_update AFTER UPDATE OF valid_to ON memory_vectors
        WHEN old.valid_to IS NOT new.valid_to BEGIN
            {_END_IN_PARTITION.format(partition="old.partition")}
        END;
        """
    )


#: The rowid a new memory takes: above every memory's, and above every purged memory's, so a rowid is
#: never given twice (SQLite's own choice reuses the highest one once its row is gone).
NEXT_MEMORY_ROWID = (
    "(SELECT max(coalesce((SELECT max(rowid) FROM memories), 0), "
    "(SELECT high FROM retired_rowids WHERE tab = 'memories')) + 1)"
)


def _m008_rowids_never_reused(db: apsw.Connection, ctx: SchemaContext) -> None:
    # Memories take rowids above every purged one (`NEXT_MEMORY_ROWID`), so a cached copy of a partition
    # can trust its rowids across a purge: a purge only marks `ended` now, and a cached copy drops the rows
    # that are gone when it re-reads its rows' validity. A row inserted at or below a purged rowid (by an
    # older Retain that lets SQLite choose) still marks its partition reset.
    memory_partition = "{row}.tenant_id || char(31) || coalesce({row}.user_id, '')"
    db.execute(
        f"""
        CREATE TABLE retired_rowids (tab TEXT PRIMARY KEY, high INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO retired_rowids VALUES ('memories', 0);
        DROP TRIGGER memories_reset_on_delete;
        CREATE TRIGGER memories_ended_on_delete AFTER DELETE ON memories BEGIN
            UPDATE retired_rowids SET high = max(high, old.rowid) WHERE tab = 'memories';
            {_END_IN_PARTITION.format(partition=memory_partition.format(row="old"))}
        END;
        DROP TRIGGER memory_vectors_reset_on_delete;
        CREATE TRIGGER memory_vectors_ended_on_delete AFTER DELETE ON memory_vectors BEGIN
            {_END_IN_PARTITION.format(partition="old.partition")}
        END;
        CREATE TRIGGER memories_reset_on_reuse AFTER INSERT ON memories
        WHEN new.rowid <= (SELECT high FROM retired_rowids WHERE tab = 'memories') BEGIN
            {_RESET_PARTITION.format(partition=memory_partition.format(row="new"))}
        END;
        """
    )


def _m009_facets(db: apsw.Connection, ctx: SchemaContext) -> None:
    # The sentence vectors of a verbatim user turn (`retain.indexing.facet_texts`), float32 rows; NULL for
    # none. They live and go with the row's vector, so no trigger needs to know of them.
    db.execute("ALTER TABLE memory_vectors ADD COLUMN facets BLOB")


#: Version -> migration, applied in order; numbers are never reused.
MIGRATIONS: dict[int, Callable[[apsw.Connection, SchemaContext], None]] = {
    1: _m001_core,
    2: _m002_indexes,
    3: _m003_event_scope_indexes,
    4: _m004_api_keys,
    5: _m005_index_text_and_keyword_stats,
    6: _m006_partition_resets,
    7: _m007_partition_endings,
    8: _m008_rowids_never_reused,
    9: _m009_facets,
}
