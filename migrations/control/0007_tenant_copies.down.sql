DROP INDEX IF EXISTS tenants_created_by_tenant;
ALTER TABLE tenants DROP COLUMN IF EXISTS created_by_tenant;
