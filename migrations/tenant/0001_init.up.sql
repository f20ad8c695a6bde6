-- Tenant template. Runs as the tenant's role (so it owns what is created here),
-- after the provisioner has created the `vector` extension as the admin role.

-- Gateway-managed data (vector collections, ...) lives in its own schema, apart
-- from the tenant's own tables in `public`.
CREATE SCHEMA sluice;
COMMENT ON SCHEMA sluice IS 'Managed by the Sluice gateway: vector collections and their points';
