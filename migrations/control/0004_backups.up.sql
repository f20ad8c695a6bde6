-- Backups: one row per run, each tenant's schedule and own recipients,
-- and the fence a restore in place puts around a tenant.

-- Set while a restore replaces the tenant's data: both doors refuse new
-- work with a retryable error (NULL = not fenced).
ALTER TABLE tenants ADD COLUMN fenced_reason text CHECK (length(fenced_reason) <= 500);

-- No foreign key to tenants: backups outlive their tenant (restore as new).
CREATE TABLE backups (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL,
    tenant_name    text NOT NULL,
    -- running: being written (a heartbeat proves it); complete: its manifest
    -- is written; failed: its parts were removed; expired: removed by retention.
    status         text NOT NULL CHECK (status IN ('running', 'complete', 'failed', 'expired')),
    trigger        text NOT NULL CHECK (trigger IN ('manual', 'schedule')),
    pinned         boolean NOT NULL DEFAULT false,
    started_at     timestamptz NOT NULL DEFAULT now(),
    heartbeat_at   timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    snapshot_at    timestamptz,
    db_bytes       bigint NOT NULL DEFAULT 0,
    object_count   bigint NOT NULL DEFAULT 0,
    object_bytes   bigint NOT NULL DEFAULT 0,
    uploaded_bytes bigint NOT NULL DEFAULT 0,
    stored_bytes   bigint NOT NULL DEFAULT 0,
    error          text,
    verified_at    timestamptz,
    verify_ok      boolean,
    verify_error   text
);
CREATE INDEX backups_tenant_started ON backups (tenant_id, started_at DESC);
CREATE UNIQUE INDEX backups_one_running ON backups (tenant_id) WHERE status = 'running';

-- Per-tenant backup settings; NULL columns take the gateway's `[backup]` values.
CREATE TABLE backup_settings (
    tenant_id        uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    interval_s       integer CHECK (interval_s = 0 OR interval_s >= 60),
    retain_days      integer CHECK (retain_days >= 1),
    retain_min_count integer CHECK (retain_min_count >= 0),
    -- The tenant's own age public keys: its backups open with them too.
    recipients       text[] NOT NULL DEFAULT '{}' CHECK (cardinality(recipients) <= 10),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
