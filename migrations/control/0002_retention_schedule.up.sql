-- Per-tenant retention schedule: how often the scheduler runs the tenant's
-- retention plugin. No row: the gateway's `retention.interval_s`; 0: never.
CREATE TABLE retention_schedules (
    tenant_id  uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    interval_s integer NOT NULL CHECK (interval_s = 0 OR interval_s >= 60),
    updated_at timestamptz NOT NULL DEFAULT now()
);
