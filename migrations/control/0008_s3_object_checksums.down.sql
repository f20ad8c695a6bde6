DROP TABLE IF EXISTS s3_object_checksums;
