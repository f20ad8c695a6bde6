-- S3 access keys: one row per key pair of a tenant. The secret is never
-- stored: it is derived from the master key and the access key id.
CREATE TABLE s3_credentials (
    access_key_id text PRIMARY KEY CHECK (access_key_id ~ '^[A-Z0-9]{20}$'),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- A read-only key may read and list, never write or delete.
    read_only     boolean NOT NULL DEFAULT false,
    -- The key reaches only keys that start with this ('' = the whole bucket).
    prefix        text NOT NULL DEFAULT '' CHECK (length(prefix) <= 1024),
    label         text NOT NULL DEFAULT '' CHECK (length(label) <= 200),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
CREATE INDEX s3_credentials_tenant ON s3_credentials (tenant_id, created_at);
