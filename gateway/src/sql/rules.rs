//! What the statement model refuses, before anything reaches the upstream.
//!
//! - [`shared_cluster`]: statements no tenant may run on a cluster it shares
//!   with others (both doors): changing its role or database (a password, a
//!   connection limit, role/database-level settings), tablespaces, `ALTER
//!   SYSTEM`, `LOAD`, server-side `COPY` files and programs, `SET SESSION
//!   AUTHORIZATION`, and turning `standard_conforming_strings` off (the
//!   gateway's parser would then read string literals differently from the
//!   server), `set_config` with a computed setting name (it could be either
//!   of those), and client encodings whose multibyte characters can contain
//!   ASCII bytes such as `\` (SJIS, BIG5, GBK, UHC, GB18030, JOHAB): in such an
//!   encoding the server would read a text the gateway parsed as UTF-8 as a
//!   different statement. Opaque code that changes either setting is caught
//!   where the door sees the server's report (see [`unsafe_setting`]).
//! - [`http_statement`]: what a `/v1/sql` statement may not do inside the
//!   transaction the gateway opened for the request: transaction control
//!   (savepoints are fine), resource settings beyond the tenant's quota (and
//!   `RESET ALL`, which would lift them), and SQL-level `PREPARE`, which would
//!   outlive the request. Other session state is cleaned when the pooled
//!   connection is recycled (`RESET ALL`, `UNLISTEN *`, advisory unlock,
//!   `DISCARD TEMP`), so it lasts only for the request.
//!
//! - [`pg_statement`]: what a Postgres-door statement may not do.
//!
//! Resource settings ([`Ceilings`]) on both doors: the time limits
//! (`statement_timeout`, `lock_timeout`, `idle_in_transaction_session_timeout`,
//! `transaction_timeout`) between 1 ms and the tenant's statement timeout,
//! `work_mem` and `maintenance_work_mem` up to the operator's ceilings
//! (`postgres.max_work_mem`, `postgres.max_maintenance_work_mem`), other
//! memory and parallelism settings not at all. `temp_file_limit` is also
//! superuser-only in Postgres, and every tenant role has it set
//! (`postgres.temp_file_limit`), so opaque code cannot raise it either.
//!
//! Each refusal names its rule; both doors render it with SQLSTATE 42501.

use std::sync::Arc;

use super::statement::{SessionEffect, Statement};

/// A statement the rules refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (rule: {rule})")]
pub struct Refusal {
    /// Stable rule name, e.g. `shared-cluster.role`.
    pub rule: &'static str,
    pub message: String,
}

impl Refusal {
    /// `insufficient_privilege`.
    pub const SQLSTATE: &'static str = "42501";

    fn new(rule: &'static str, message: impl Into<String>) -> Self {
        Self { rule, message: message.into() }
    }
}

/// Settings that bound what one statement or session can consume; a tenant
/// may lower the time limits within its quota but not lift them.
const TIME_LIMITS: &[&str] =
    &["statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "transaction_timeout"];

/// Memory settings a tenant may set up to the operator's ceiling.
const MEMORY_LIMITS: &[&str] = &["work_mem", "maintenance_work_mem"];

/// Resource settings only the operator sets.
const OPERATOR_SETTINGS: &[&str] = &[
    "temp_file_limit",
    "hash_mem_multiplier",
    "max_parallel_workers_per_gather",
    "max_parallel_maintenance_workers",
    "idle_session_timeout",
    "temp_buffers",
];

/// Statements no tenant may run on a shared cluster.
pub fn shared_cluster(st: &Statement) -> Result<(), Refusal> {
    if let Some(d) = &st.ddl {
        let what = format!("{} {}", d.action.to_ascii_uppercase(), d.object.to_ascii_uppercase());
        match d.object.as_str() {
            "role" => {
                return Err(Refusal::new(
                    "shared-cluster.role",
                    format!(
                        "{what} is not allowed: the tenant's database role is managed by the gateway (its password, connection limit and settings)"
                    ),
                ));
            }
            "database" => {
                return Err(Refusal::new(
                    "shared-cluster.database",
                    format!("{what} is not allowed: databases on the shared cluster are managed by the gateway"),
                ));
            }
            "tablespace" => {
                return Err(Refusal::new(
                    "shared-cluster.tablespace",
                    format!("{what} is not allowed on a shared cluster"),
                ));
            }
            "system" => {
                return Err(Refusal::new("shared-cluster.system", "ALTER SYSTEM is not allowed on a shared cluster"));
            }
            _ => {}
        }
    }
    if st.copy_server_side {
        return Err(Refusal::new(
            "shared-cluster.copy-file",
            "COPY to or from a server file or program is not allowed; use COPY … FROM STDIN / TO STDOUT",
        ));
    }
    for e in &st.session {
        match e {
            SessionEffect::Load => {
                return Err(Refusal::new("shared-cluster.load", "LOAD is not allowed on a shared cluster"));
            }
            SessionEffect::SetConfig { name: None, .. } => {
                return Err(Refusal::new(
                    "shared-cluster.set-config",
                    "set_config with a computed setting name is not allowed through the gateway; name the setting",
                ));
            }
            SessionEffect::Set { name, value, .. } | SessionEffect::SetConfig { name: Some(name), value, .. } => {
                if name == "session_authorization" {
                    return Err(Refusal::new(
                        "shared-cluster.session-authorization",
                        "SET SESSION AUTHORIZATION is not allowed",
                    ));
                }
                // `SET … TO DEFAULT` has no value (and is safe); a computed
                // `set_config` value could be anything.
                let value = match (e, value) {
                    (_, Some(v)) => v.as_str(),
                    (SessionEffect::Set { .. }, None) => continue,
                    _ => "?",
                };
                if let Some(r) = unsafe_setting(name, value) {
                    return Err(r);
                }
                if value == "?" && name == "client_encoding" {
                    return Err(Refusal::new(
                        "shared-cluster.client-encoding",
                        "set_config of client_encoding with a computed value is not allowed",
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Client encodings Postgres accepts only on the client side, because a
/// character's later bytes may look like ASCII (`\`, `'`…).
const UNSAFE_CLIENT_ENCODINGS: &[&str] = &[
    "sjis",
    "shiftjis",
    "mskanji",
    "win932",
    "windows932",
    "shiftjis2004",
    "big5",
    "win950",
    "windows950",
    "gbk",
    "win936",
    "windows936",
    "cp936",
    "uhc",
    "win949",
    "windows949",
    "johab",
    "gb18030",
];

/// Whether a value of `name` would make the server read statement text
/// differently from the gateway's parser: an unsafe client encoding, or
/// `standard_conforming_strings` off. `None` when the value is fine; else the
/// refusal. Used for SET, startup parameters and the server's own reports.
pub fn unsafe_setting(name: &str, value: &str) -> Option<Refusal> {
    match name {
        "client_encoding" => {
            let norm: String =
                value.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
            UNSAFE_CLIENT_ENCODINGS.contains(&norm.as_str()).then(|| {
                Refusal::new(
                    "shared-cluster.client-encoding",
                    format!("client_encoding {value} is not supported through the gateway; use UTF8"),
                )
            })
        }
        "standard_conforming_strings" => (!is_on(value)).then(|| {
            Refusal::new(
                "shared-cluster.standard-conforming-strings",
                "standard_conforming_strings must stay on through the gateway",
            )
        }),
        _ => None,
    }
}

fn is_on(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "on" | "true" | "1" | "yes")
}

/// Milliseconds of a time setting's value as Postgres reads it (a bare number
/// is milliseconds; units `us`, `ms`, `s`, `min`, `h`, `d`).
pub fn duration_ms(v: &str) -> Option<f64> {
    let v = v.trim();
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    Some(n * factor)
}

/// Kilobytes of a memory setting's value as Postgres reads it for `work_mem`
/// and its kin (a bare number is kB; units `B`, `kB`, `MB`, `GB`, `TB`,
/// case-sensitive as in Postgres). `None` for anything else (negative,
/// fractional, unknown unit).
pub fn memory_kb(v: &str) -> Option<f64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor = match unit.trim() {
        "B" => 1.0 / 1024.0,
        "" | "kB" => 1.0,
        "MB" => 1024.0,
        "GB" => 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(n * factor)
}

/// How far a tenant may raise its resource settings: the tenant's
/// statement timeout and the operator's memory ceilings.
#[derive(Debug, Clone, PartialEq)]
pub struct Ceilings {
    /// The tenant's statement timeout, ms; 0 = no quota (time limits free).
    pub statement_timeout_ms: u64,
    /// `postgres.max_work_mem` as written (for messages) and in kB.
    pub work_mem: (Arc<str>, f64),
    /// `postgres.max_maintenance_work_mem` as written and in kB.
    pub maintenance_work_mem: (Arc<str>, f64),
}

impl Ceilings {
    /// A tenant's ceilings: its statement timeout quota, the operator's
    /// memory ceilings (validated when the config loads).
    pub fn new(cfg: &crate::config::PostgresConfig, statement_timeout_ms: i32) -> Self {
        let size = |v: &str| (Arc::<str>::from(v), memory_kb(v).unwrap_or(0.0));
        Self {
            statement_timeout_ms: u64::try_from(statement_timeout_ms).unwrap_or(0),
            work_mem: size(cfg.max_work_mem.as_str()),
            maintenance_work_mem: size(cfg.max_maintenance_work_mem.as_str()),
        }
    }

    /// The same memory ceilings with another tenant's statement timeout.
    pub fn with_statement_timeout(&self, statement_timeout_ms: i32) -> Self {
        Self { statement_timeout_ms: u64::try_from(statement_timeout_ms).unwrap_or(0), ..self.clone() }
    }
}

/// What one `/v1/sql` statement may not do.
pub fn http_statement(st: &Statement, ceilings: &Ceilings) -> Result<(), Refusal> {
    if st.controls_transaction() {
        return Err(Refusal::new(
            "http.transaction-control",
            "transaction control is not allowed in /v1/sql: every request runs in one transaction that the gateway commits (SAVEPOINT, RELEASE and ROLLBACK TO are allowed)",
        ));
    }
    for e in &st.session {
        match e {
            SessionEffect::Set { name, value, .. } | SessionEffect::SetConfig { name: Some(name), value, .. } => {
                resource_setting(name, value.as_deref(), ceilings)?
            }
            SessionEffect::SetConfig { name: None, .. } => {
                return Err(Refusal::new(
                    "http.set-config",
                    "set_config with a computed setting name is not allowed in /v1/sql",
                ));
            }
            SessionEffect::Reset { name: None } => {
                return Err(Refusal::new(
                    "http.resource-setting",
                    "RESET ALL is not allowed in /v1/sql: it would lift the tenant's statement timeout; reset settings by name",
                ));
            }
            SessionEffect::Reset { name: Some(name) } if is_resource_setting(name) => {
                return Err(Refusal::new(
                    "http.resource-setting",
                    format!("RESET {name} is not allowed in /v1/sql: the gateway sets it from the tenant's quota"),
                ));
            }
            SessionEffect::Prepare { .. } => {
                return Err(Refusal::new(
                    "http.session-state",
                    "SQL-level PREPARE would outlive the request on a pooled connection; /v1/sql prepares every statement already",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a Postgres-door statement may not do: raise a resource setting past
/// its ceiling or change the resource settings only the operator sets.
/// (`RESET` is fine there: the session default of every upstream connection
/// is the quota, and the role's defaults are within the ceilings.)
pub fn pg_statement(st: &Statement, ceilings: &Ceilings) -> Result<(), Refusal> {
    for e in &st.session {
        let (name, value) = match e {
            SessionEffect::Set { name, value, .. } => (name.as_str(), value.as_deref()),
            SessionEffect::SetConfig { name: Some(name), value, .. } => (name.as_str(), value.as_deref()),
            _ => continue,
        };
        resource_setting(name, value, ceilings).map_err(|r| Refusal { rule: "pg.resource-setting", ..r })?;
    }
    Ok(())
}

/// A startup parameter (`options=-c name=value`, or a parameter of the
/// startup packet) the Postgres door refuses, as [`pg_statement`] would.
pub fn pg_startup_setting(name: &str, value: &str, ceilings: &Ceilings) -> Option<Refusal> {
    resource_setting(name, Some(value), ceilings).err().map(|r| Refusal { rule: "pg.resource-setting", ..r })
}

fn is_resource_setting(name: &str) -> bool {
    TIME_LIMITS.contains(&name) || MEMORY_LIMITS.contains(&name) || OPERATOR_SETTINGS.contains(&name)
}

fn resource_setting(name: &str, value: Option<&str>, ceilings: &Ceilings) -> Result<(), Refusal> {
    let quota_ms = ceilings.statement_timeout_ms;
    if TIME_LIMITS.contains(&name) && quota_ms > 0 {
        let ms = value.and_then(duration_ms);
        return match ms {
            Some(ms) if ms >= 1.0 && ms <= quota_ms as f64 => Ok(()),
            _ => Err(Refusal::new(
                "http.resource-setting",
                format!(
                    "{name} may be set between 1ms and the tenant's statement timeout ({quota_ms} ms); got {}",
                    value.unwrap_or("DEFAULT")
                ),
            )),
        };
    }
    if MEMORY_LIMITS.contains(&name) {
        let (written, kb) = if name == "work_mem" { &ceilings.work_mem } else { &ceilings.maintenance_work_mem };
        return match value {
            // `SET … TO DEFAULT`: the role's default, within the ceiling.
            None => Ok(()),
            Some(v) if memory_kb(v).is_some_and(|n| n <= *kb) => Ok(()),
            Some(v) => Err(Refusal::new(
                "http.resource-setting",
                format!("{name} may be set up to {written} (the operator's ceiling); got {v}"),
            )),
        };
    }
    if OPERATOR_SETTINGS.contains(&name) {
        return Err(Refusal::new(
            "http.resource-setting",
            format!("{name} is a resource setting the operator controls; tenants cannot change it"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(memory_kb("65536"), Some(65536.0));
        assert_eq!(memory_kb("64kB"), Some(64.0));
        assert_eq!(memory_kb("4MB"), Some(4096.0));
        assert_eq!(memory_kb("4 GB"), Some(4.0 * 1024.0 * 1024.0));
        assert_eq!(memory_kb("1TB"), Some(1024.0 * 1024.0 * 1024.0));
        for bad in ["-1", "4gb", "1.5GB", "lots", "", "4 parsecs"] {
            assert_eq!(memory_kb(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms("5000"), Some(5000.0));
        assert_eq!(duration_ms("5s"), Some(5000.0));
        assert_eq!(duration_ms("1min"), Some(60_000.0));
        assert_eq!(duration_ms("0"), Some(0.0));
        assert_eq!(duration_ms("soon"), None);
        assert_eq!(duration_ms("5 parsecs"), None);
    }
}
