DO $$ BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO PUBLIC', current_database());
END $$;
DROP TABLE audit_log;
DROP TABLE retention_runs;
DROP TABLE collections;
DROP TABLE plugin_versions;
DROP TABLE plugins;
DROP TABLE key_limits;
DROP TABLE api_keys;
DROP TABLE quotas;
DROP TABLE tenants;
