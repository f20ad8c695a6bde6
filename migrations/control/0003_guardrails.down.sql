DROP TABLE tenant_usage;
ALTER TABLE quotas
    DROP COLUMN max_db_bytes,
    DROP COLUMN max_storage_bytes,
    DROP COLUMN max_kv_bytes,
    DROP COLUMN max_vector_points,
    DROP COLUMN max_result_bytes;
UPDATE tenants SET status = 'active' WHERE status = 'suspended';
ALTER TABLE tenants DROP COLUMN suspended_reason;
ALTER TABLE tenants DROP CONSTRAINT tenants_status_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_status_check
    CHECK (status IN ('provisioning', 'active', 'deleting'));
