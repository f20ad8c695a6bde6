//! The append-only audit log: every admin action, who did it, and how it ended.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;

use super::ControlError;
use crate::ids::TenantId;

/// Who acted.
#[derive(Debug, Clone)]
pub enum Actor {
    /// The operator token on the admin API.
    Operator,
    /// The `sluice` CLI run by an operator.
    Cli,
    /// A tenant API key (by its public prefix).
    Key(String),
}

impl Actor {
    pub fn label(&self) -> String {
        match self {
            Actor::Operator => "operator".into(),
            Actor::Cli => "cli".into(),
            Actor::Key(p) => format!("key:{p}"),
        }
    }
}

/// One audit record to write.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    pub tenant_id: Option<TenantId>,
    pub tenant_name: Option<&'a str>,
    pub actor: &'a Actor,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub ok: bool,
    pub details: Value,
    pub request_id: Option<&'a str>,
}

/// An audit record as read back.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub tenant: Option<String>,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub details: Value,
    pub request_id: Option<String>,
}

pub async fn record(c: &impl GenericClient, e: &AuditEvent<'_>) -> Result<(), ControlError> {
    c.execute(
        "INSERT INTO audit_log (tenant_id, tenant_name, actor, action, target, outcome, details, request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &e.tenant_id.map(|t| t.0),
            &e.tenant_name,
            &e.actor.label(),
            &e.action,
            &e.target,
            &(if e.ok { "ok" } else { "failed" }),
            &e.details,
            &e.request_id,
        ],
    )
    .await?;
    Ok(())
}

/// Newest first; `tenant` narrows to one tenant (always set for tenant callers).
pub async fn list(
    c: &impl GenericClient,
    tenant: Option<TenantId>,
    limit: i64,
    before_id: Option<i64>,
) -> Result<Vec<AuditEntry>, ControlError> {
    let rows = c
        .query(
            "SELECT id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), tenant_name,
                    actor, action, target, outcome, details, request_id
             FROM audit_log
             WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::bigint IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3",
            &[&tenant.map(|t| t.0), &before_id, &limit.clamp(1, 1000)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AuditEntry {
            id: r.get(0),
            at: r.get(1),
            tenant: r.get(2),
            actor: r.get(3),
            action: r.get(4),
            target: r.get(5),
            outcome: r.get(6),
            details: r.get(7),
            request_id: r.get(8),
        })
        .collect())
}
