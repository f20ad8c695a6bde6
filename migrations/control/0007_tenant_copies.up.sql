-- The tenant whose admin created this tenant by restoring one of its
-- backups as new (NULL: created by an operator). A tenant admin may have at
-- most `backup.tenant_copies_max` such live tenants.
ALTER TABLE tenants ADD COLUMN created_by_tenant uuid;
CREATE INDEX tenants_created_by_tenant ON tenants (created_by_tenant) WHERE created_by_tenant IS NOT NULL;
