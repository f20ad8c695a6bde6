-- The whole-object checksum of an object completed from a multipart upload
-- (S3's composite `<checksum of the parts' checksums>-N`). The store's
-- metadata is fixed when the upload begins, so it cannot hold it. A row
-- answers only while the object still has `etag`; a write or delete of the
-- key removes it.
CREATE TABLE s3_object_checksums (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key       text NOT NULL,
    etag      text NOT NULL,
    -- `ALGORITHM:base64-N`.
    checksum  text NOT NULL CHECK (length(checksum) <= 200),
    PRIMARY KEY (tenant_id, key)
);
