"""PostgreSQL migrations: numbered functions, applied in order when a store opens.

They run in one transaction under an advisory lock, so several processes
opening the same database at once migrate it exactly once, and each applied
migration is recorded in `schema_migrations`. Add new ones at the end; never
edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Serialises migrations across processes (an arbitrary constant: "retain" in ASCII).
MIGRATION_LOCK = 0x72657461696E

#: A btree entry holds at most 2,704 bytes. The store refuses memories whose tenant, user and
#: memory ids take more than this many bytes together (UTF-8)...
MAX_KEY_BYTES = 600
#: ...so the current-vector index can carry the embedding (for index-only KNN scans) up to this
#: many dimensions (all-MiniLM-L6-v2 has 384); larger vectors are read from the table.
COVERING_MAX_DIMENSIONS = (2704 - 64 - MAX_KEY_BYTES - 8) // 4


@dataclass(frozen=True)
class SchemaContext:
    dimensions: int


def _m001_core(db: Any, ctx: SchemaContext) -> None:
    db.execute("CREATE EXTENSION IF NOT EXISTS vector")
    # Keyword postings per user: every lexeme is stored again with a short hash of (tenant, user)
    # in front, so a GIN lookup for one user's terms reads only that user's postings, like the
    # prefixed terms of the SQLite store. Without it a common word's posting list spans every user.
    db.execute(
        """
        CREATE FUNCTION retain_scoped_terms(owner text, doc text) RETURNS tsvector
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT array_to_tsvector(coalesce(array_agg(owner || lexeme), '{}'::text[]))
            FROM unnest(tsvector_to_array(to_tsvector('english'::regconfig, doc))) AS lexeme
        $$
        """
    )
    db.execute(
        f"""
        CREATE TABLE store_meta (key text PRIMARY KEY, value text NOT NULL);

        CREATE TABLE memories (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            tenant_id text NOT NULL,
            user_id text,
            agent_id text,
            run_id text,
            lineage_id text NOT NULL,
            text text NOT NULL,
            -- What keyword search indexes when it is not `text` (a verbatim turn with its speaker and context).
            index_text text,
            category text,
            metadata jsonb NOT NULL DEFAULT '{{}}',
            hash text NOT NULL,
            created_at bigint NOT NULL,
            updated_at bigint NOT NULL,
            valid_from bigint NOT NULL,
            valid_to bigint,
            superseded_by text,
            source_message_ids jsonb NOT NULL DEFAULT '[]',
            access_count bigint NOT NULL DEFAULT 0,
            last_accessed_at bigint,
            expires_at bigint,
            embedding vector({ctx.dimensions}) NOT NULL,
            terms tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, coalesce(index_text, text))) STORED,
            scoped_terms tsvector GENERATED ALWAYS AS (
                retain_scoped_terms(
                    left(md5(tenant_id || chr(31) || coalesce(user_id, '')), 10), coalesce(index_text, text)
                )
            ) STORED
        );
        CREATE INDEX memories_user ON memories (tenant_id, user_id, seq);
        CREATE INDEX memories_agent ON memories (tenant_id, agent_id, seq);
        CREATE INDEX memories_run ON memories (tenant_id, run_id, seq);
        CREATE INDEX memories_lineage ON memories (tenant_id, lineage_id);
        CREATE INDEX memories_hash ON memories (tenant_id, hash) WHERE valid_to IS NULL;
        CREATE INDEX memories_scoped_terms ON memories USING gin (scoped_terms);

        CREATE TABLE memory_events (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id text NOT NULL,
            memory_id text NOT NULL,
            lineage_id text NOT NULL,
            user_id text,
            agent_id text,
            run_id text,
            event text NOT NULL,
            old_text text,
            new_text text,
            reason text,
            actor text NOT NULL,
            source_message_ids jsonb NOT NULL DEFAULT '[]',
            created_at bigint NOT NULL
        );
        CREATE INDEX memory_events_lineage ON memory_events (tenant_id, lineage_id, seq);
        CREATE INDEX memory_events_memory ON memory_events (memory_id);
        CREATE INDEX memory_events_user ON memory_events (tenant_id, user_id);
        CREATE INDEX memory_events_agent ON memory_events (tenant_id, agent_id);
        CREATE INDEX memory_events_run ON memory_events (tenant_id, run_id);

        CREATE TABLE messages (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            tenant_id text NOT NULL,
            user_id text,
            agent_id text,
            run_id text,
            role text NOT NULL,
            name text,
            content text NOT NULL,
            metadata jsonb NOT NULL DEFAULT '{{}}',
            created_at bigint NOT NULL
        );
        CREATE INDEX messages_user ON messages (tenant_id, user_id, seq);
        CREATE INDEX messages_agent ON messages (tenant_id, agent_id, seq);
        CREATE INDEX messages_run ON messages (tenant_id, run_id, seq);

        CREATE TABLE jobs (
            id text PRIMARY KEY,
            tenant_id text NOT NULL,
            user_id text,
            agent_id text,
            run_id text,
            kind text NOT NULL,
            payload jsonb NOT NULL,
            status text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            max_attempts integer NOT NULL DEFAULT 5,
            run_after bigint NOT NULL,
            locked_until bigint,
            last_error text,
            result jsonb,
            created_at bigint NOT NULL,
            updated_at bigint NOT NULL
        );
        CREATE INDEX jobs_due ON jobs (status, run_after);
        CREATE INDEX jobs_scope ON jobs (tenant_id, user_id);
        CREATE INDEX jobs_agent ON jobs (tenant_id, agent_id);
        CREATE INDEX jobs_run ON jobs (tenant_id, run_id);
        CREATE INDEX jobs_tenant ON jobs (tenant_id, created_at);

        CREATE TABLE api_keys (
            id text PRIMARY KEY,
            tenant_id text NOT NULL,
            name text NOT NULL,
            prefix text NOT NULL,
            secret_hash text NOT NULL UNIQUE,
            admin boolean NOT NULL,
            created_at bigint NOT NULL,
            revoked_at bigint
        );
        CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);
        """
    )


def _m002_knn_index(db: Any, ctx: SchemaContext) -> None:
    # Exact per-user KNN (see postgres.py): the current memories of one (tenant, user) sit
    # together in this index, with their embedding, so a search is an index-only range scan
    # plus a sort; no approximate index can drop rows from a user's top-k.
    if ctx.dimensions <= COVERING_MAX_DIMENSIONS:
        db.execute(
            "CREATE INDEX memories_current_vectors ON memories (tenant_id, user_id) "
            "INCLUDE (id, expires_at, embedding) WHERE valid_to IS NULL"
        )
    else:
        db.execute(
            "CREATE INDEX memories_current_vectors ON memories (tenant_id, user_id) "
            "INCLUDE (id, expires_at) WHERE valid_to IS NULL"
        )


def _m003_partition_versions(db: Any, ctx: SchemaContext) -> None:
    # A counter per (tenant, user), bumped in every transaction that changes the user's memories, so a
    # process can tell whether its cached copy of the user's vectors is current (see vector_index.py);
    # `reset` is the version of the last change that did more than add memories. Rows are never
    # deleted: a counter that restarted could meet a stale cached version again. A NULL user is ''.
    db.execute(
        "CREATE TABLE partition_versions (tenant_id text NOT NULL, user_id text NOT NULL, "
        "version bigint NOT NULL, reset bigint NOT NULL, PRIMARY KEY (tenant_id, user_id))"
    )


def _m004_drop_scoped_terms(db: Any, ctx: SchemaContext) -> None:
    # A user's keyword search now reads the user's `terms` once into a per-process cache
    # (keyword_index.py), and searches spanning users read `terms` through the scope's btree, so
    # nothing reads the per-user postings any more; they cost every insert a second tsvector and a
    # GIN entry per lexeme.
    db.execute("DROP INDEX memories_scoped_terms")
    db.execute("ALTER TABLE memories DROP COLUMN scoped_terms")
    db.execute("DROP FUNCTION retain_scoped_terms(text, text)")


def _m005_partition_endings(db: Any, ctx: SchemaContext) -> None:
    # The memories a user's writes ended (superseded or invalidated) or purged since the last `reset`, each
    # as [version, id, valid_to] (valid_to null: purged): a process whose cached copy of the user is older
    # applies these instead of reading which of the user's memories remain (postgres.py `_cached`).
    # Writers keep it short: past `ENDED_LOG_MAX` entries they mark a reset instead, which empties it.
    db.execute("ALTER TABLE partition_versions ADD COLUMN ended jsonb NOT NULL DEFAULT '[]'")


def _m006_facets(db: Any, ctx: SchemaContext) -> None:
    # The sentence vectors of a verbatim user turn (`retain.indexing.facet_texts`), float32 rows; null for
    # none. Read with the user's current vectors (postgres.py `_LOAD_SQL`).
    db.execute("ALTER TABLE memories ADD COLUMN facets bytea")


MIGRATIONS: list[Callable[[Any, SchemaContext], None]] = [
    _m001_core,
    _m002_knn_index,
    _m003_partition_versions,
    _m004_drop_scoped_terms,
    _m005_partition_endings,
    _m006_facets,
]
