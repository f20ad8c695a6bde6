DROP TABLE s3_upload_parts;
DROP TABLE s3_uploads;
