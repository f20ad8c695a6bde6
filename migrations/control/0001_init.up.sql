-- Control plane: tenants, credentials, quotas, plugins, collections, retention, audit.

CREATE TABLE tenants (
    id               uuid PRIMARY KEY,
    name             text NOT NULL UNIQUE
                     CHECK (name ~ '^[a-z][a-z0-9-]{1,38}[a-z0-9]$' AND name NOT LIKE '%--%'),
    -- provisioning: being created (or a failed create not yet cleaned up);
    -- active: serving; deleting: being torn down.
    status           text NOT NULL CHECK (status IN ('provisioning', 'active', 'deleting')),
    db_name          text NOT NULL UNIQUE,
    db_role          text NOT NULL UNIQUE,
    bucket           text NOT NULL UNIQUE,
    -- Every API key of a tenant shares this SCRAM salt, so the Postgres door can
    -- check a client proof against each key's verifier (see control/keys.rs).
    scram_salt       bytea NOT NULL,
    scram_iterations integer NOT NULL CHECK (scram_iterations >= 4096),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE quotas (
    tenant_id            uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    pg_pool_size         integer NOT NULL CHECK (pg_pool_size > 0),
    pg_max_connections   integer NOT NULL CHECK (pg_max_connections > 0),
    http_rps             integer NOT NULL CHECK (http_rps > 0),
    http_burst           integer NOT NULL CHECK (http_burst > 0),
    query_rps            integer NOT NULL CHECK (query_rps > 0),
    query_burst          integer NOT NULL CHECK (query_burst > 0),
    bytes_in_per_sec     bigint  NOT NULL CHECK (bytes_in_per_sec > 0),
    bytes_out_per_sec    bigint  NOT NULL CHECK (bytes_out_per_sec > 0),
    statement_timeout_ms integer NOT NULL CHECK (statement_timeout_ms > 0),
    max_rows             integer NOT NULL CHECK (max_rows > 0),
    max_object_bytes     bigint  NOT NULL CHECK (max_object_bytes > 0),
    max_kv_value_bytes   integer NOT NULL CHECK (max_kv_value_bytes > 0),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- Public part of the key (`slk_<prefix>_<secret>`); the secret is never stored.
    prefix            text NOT NULL UNIQUE CHECK (prefix ~ '^[a-z0-9]{12}$'),
    secret_sha256     bytea NOT NULL CHECK (octet_length(secret_sha256) = 32),
    scram_stored_key  bytea NOT NULL CHECK (octet_length(scram_stored_key) = 32),
    scram_server_key  bytea NOT NULL CHECK (octet_length(scram_server_key) = 32),
    role              text NOT NULL CHECK (role IN ('admin', 'service')),
    label             text NOT NULL DEFAULT '' CHECK (length(label) <= 200),
    created_at        timestamptz NOT NULL DEFAULT now(),
    revoked_at        timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- Per-key overrides of the tenant's rate limits (NULL = the tenant's value).
CREATE TABLE key_limits (
    key_id      uuid PRIMARY KEY REFERENCES api_keys (id) ON DELETE CASCADE,
    http_rps    integer CHECK (http_rps > 0),
    http_burst  integer CHECK (http_burst > 0),
    query_rps   integer CHECK (query_rps > 0),
    query_burst integer CHECK (query_burst > 0)
);

CREATE TABLE plugins (
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind           text NOT NULL CHECK (kind IN ('policy', 'retention', 'reranker')),
    active_version integer,
    config         jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, kind)
);

CREATE TABLE plugin_versions (
    tenant_id    uuid NOT NULL,
    kind         text NOT NULL,
    version      integer NOT NULL CHECK (version > 0),
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes   bigint NOT NULL CHECK (size_bytes > 0),
    artifact_key text NOT NULL,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, kind, version),
    FOREIGN KEY (tenant_id, kind) REFERENCES plugins (tenant_id, kind) ON DELETE CASCADE
);

CREATE TABLE collections (
    tenant_id           uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name                text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    dimension           integer NOT NULL CHECK (dimension BETWEEN 1 AND 16000),
    metric              text NOT NULL CHECK (metric IN ('cosine', 'l2', 'inner_product')),
    hnsw_m              integer NOT NULL DEFAULT 16,
    hnsw_ef_construction integer NOT NULL DEFAULT 64,
    metadata_schema     jsonb,
    cache_threshold     real NOT NULL DEFAULT 0.95,
    -- Bumped by every write; part of the semantic-cache scope.
    version             bigint NOT NULL DEFAULT 1,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE retention_runs (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    dry_run     boolean NOT NULL,
    status      text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'capped')),
    scanned     bigint NOT NULL DEFAULT 0,
    deleted     bigint NOT NULL DEFAULT 0,
    error       text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- Append-only. No foreign key: the trail of a deleted tenant stays.
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    tenant_id   uuid,
    tenant_name text,
    actor       text NOT NULL,
    action      text NOT NULL,
    target      text,
    outcome     text NOT NULL CHECK (outcome IN ('ok', 'failed')),
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    request_id  text
);
CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, at DESC);

-- Tenant roles never need the control plane; keep them (and everyone else) out.
DO $$ BEGIN
    EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', current_database());
END $$;
