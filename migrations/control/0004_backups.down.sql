DROP TABLE backup_settings;
DROP TABLE backups;
ALTER TABLE tenants DROP COLUMN fenced_reason;
