-- Multipart uploads started on the S3 door, and their parts. The store holds
-- the bytes; these rows say which tenant an upload belongs to, bound the
-- bytes its parts take (counted in the tenant's object usage until the upload
-- completes or is aborted) and answer ListParts / ListMultipartUploads.
CREATE TABLE s3_uploads (
    upload_id    text PRIMARY KEY CHECK (length(upload_id) BETWEEN 1 AND 1024),
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key          text NOT NULL,
    content_type text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX s3_uploads_tenant ON s3_uploads (tenant_id, key, created_at);
CREATE INDEX s3_uploads_age ON s3_uploads (created_at);

CREATE TABLE s3_upload_parts (
    upload_id   text NOT NULL REFERENCES s3_uploads (upload_id) ON DELETE CASCADE,
    part_number integer NOT NULL CHECK (part_number BETWEEN 1 AND 10000),
    size        bigint NOT NULL CHECK (size >= 0),
    etag        text NOT NULL,
    -- `ALGORITHM:base64` of the checksum the client sent and the gateway
    -- verified, if any.
    checksum    text,
    uploaded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (upload_id, part_number)
);
