-- Suspension, storage quotas and measured usage per tenant.

ALTER TABLE tenants DROP CONSTRAINT tenants_status_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_status_check
    CHECK (status IN ('provisioning', 'active', 'suspended', 'deleting'));
-- Why the operator suspended the tenant (shown to its clients).
ALTER TABLE tenants ADD COLUMN suspended_reason text CHECK (length(suspended_reason) <= 500);

-- Storage and result-size quotas; existing tenants get the defaults of `[quotas]`.
ALTER TABLE quotas
    ADD COLUMN max_db_bytes      bigint NOT NULL DEFAULT 10737418240  CHECK (max_db_bytes > 0),
    ADD COLUMN max_storage_bytes bigint NOT NULL DEFAULT 107374182400 CHECK (max_storage_bytes > 0),
    ADD COLUMN max_kv_bytes      bigint NOT NULL DEFAULT 1073741824   CHECK (max_kv_bytes > 0),
    ADD COLUMN max_vector_points bigint NOT NULL DEFAULT 10000000     CHECK (max_vector_points > 0),
    ADD COLUMN max_result_bytes  bigint NOT NULL DEFAULT 67108864     CHECK (max_result_bytes > 0);

-- What each tenant stores. `object_*` and `vector_points` are kept on every
-- write and recounted at each reconcile; `db_bytes` is measured; `kv_bytes`
-- is a copy of the Redis counter as of the last reconcile.
CREATE TABLE tenant_usage (
    tenant_id      uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    db_bytes       bigint NOT NULL DEFAULT 0,
    object_bytes   bigint NOT NULL DEFAULT 0,
    object_count   bigint NOT NULL DEFAULT 0,
    kv_bytes       bigint NOT NULL DEFAULT 0,
    vector_points  bigint NOT NULL DEFAULT 0,
    measured_at    timestamptz,
    reconciled_at  timestamptz,
    -- A gateway instance measuring this tenant holds it until then.
    claimed_until  timestamptz
);
INSERT INTO tenant_usage (tenant_id) SELECT id FROM tenants;
