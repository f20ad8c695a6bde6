//! The Postgres `ErrorResponse` builder: the one place door errors reach the
//! wire, each with its real SQLSTATE.
//!
//! | SQLSTATE | when |
//! |---|---|
//! | `28P01` | authentication failed (same text whether or not the tenant exists) |
//! | `28000` | no user name, or a mechanism other than SCRAM-SHA-256 |
//! | `3D000` | a database other than the tenant's own |
//! | `08P01` | malformed, oversized or unexpected message (FATAL, connection closed) |
//! | `53300` | the tenant's `pg_max_connections` quota is reached (FATAL) |
//! | `53400` | rate limit exceeded (the connection stays usable) |
//! | `53200` | no room in the door's read budget for a large message (FATAL, connection closed) |
//! | `54000` | a statement's result passed the tenant's `max_result_bytes` (the statement is cancelled; the session stays usable) |
//! | `42601` | a syntax error, found by the gateway's parser (Postgres's own message and position) |
//! | `42501` | denied by the tenant's policy plugin, or refused by the shared-cluster rules |
//! | `58000` | the policy plugin failed (fails closed) |
//! | `42P05` | a prepared statement of that name already exists |
//! | `08006` | the upstream connection broke mid-request |
//! | `08001` | no upstream connection could be opened |
//! | `57P03` | no pooled upstream connection became free in time |
//! | `57P01` | the gateway is shutting down |
//! | `0A000` | a feature the door does not support |

use bytes::{BufMut, BytesMut};

use super::{put_cstr, put_frame};
use crate::error::{ClientError, ErrorKind};
use crate::pipeline::PipelineError;

/// ERROR keeps the session; FATAL ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

/// One error for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
    /// 1-based character position in the query (`P` field).
    pub position: Option<u32>,
}

impl PgError {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self { severity: Severity::Error, code, message: message.into(), hint: None, position: None }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Self { severity: Severity::Fatal, code, message: message.into(), hint: None, position: None }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// A syntax error as Postgres reports it.
    pub fn syntax(e: &crate::sql::SyntaxError) -> Self {
        let mut err = Self::error(e.sqlstate(), e.message.clone());
        err.position = e.position;
        err
    }

    pub fn auth_failed(user: &str) -> Self {
        Self::fatal("28P01", format!("password authentication failed for user \"{user}\""))
    }

    /// FATAL 53200: a client message of `len` bytes found no room in the
    /// door's read budget (it is not buffered; the connection closes).
    pub fn no_room(len: usize) -> Self {
        Self::fatal(
            "53200",
            format!(
                "out of memory: the gateway has no room right now for a message of {len} bytes (server.pg_read_budget_bytes is shared by all clients); retry later or send smaller messages"
            ),
        )
    }

    pub fn protocol(message: impl Into<String>) -> Self {
        Self::fatal("08P01", message)
    }

    pub fn upstream_lost() -> Self {
        Self::error("08006", "connection to the upstream database was lost; the current transaction is gone")
    }

    pub fn is_fatal(&self) -> bool {
        self.severity == Severity::Fatal
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        let sev = match self.severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        };
        put_frame(buf, b'E', |b| {
            for (field, value) in [(b'S', sev), (b'V', sev), (b'C', self.code), (b'M', self.message.as_str())] {
                b.put_u8(field);
                put_cstr(b, value.as_bytes());
            }
            if let Some(h) = &self.hint {
                b.put_u8(b'H');
                put_cstr(b, h.as_bytes());
            }
            if let Some(p) = self.position {
                b.put_u8(b'P');
                put_cstr(b, p.to_string().as_bytes());
            }
            b.put_u8(0);
        });
    }
}

impl From<&PipelineError> for PgError {
    fn from(e: &PipelineError) -> Self {
        let code = match e {
            PipelineError::RateLimited { .. } => "53400",
            PipelineError::Denied { .. } => "42501",
            PipelineError::PluginFailed(_) => "58000",
            PipelineError::Refused(_) => crate::sql::rules::Refusal::SQLSTATE,
            PipelineError::StorageFull(_) => crate::usage::SQLSTATE_QUOTA,
            PipelineError::Fenced(_) => crate::backup::fence::SQLSTATE,
        };
        let msg = e.client_message();
        match (e, e.kind()) {
            (PipelineError::RateLimited { retry_after_ms, .. }, ErrorKind::RateLimit) => {
                PgError::error(code, msg).with_hint(format!("retry in {retry_after_ms} ms"))
            }
            _ => PgError::error(code, msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_fields() {
        let mut b = BytesMut::new();
        PgError::auth_failed("acme").encode(&mut b);
        assert_eq!(b[0], b'E');
        let text = String::from_utf8_lossy(&b[5..]);
        assert!(text.contains("FATAL\0"));
        assert!(text.contains("C28P01\0"));
        assert!(text.contains("password authentication failed for user \"acme\""));
        assert_eq!(b.len() - 1, i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize);
    }

    #[test]
    fn pipeline_refusals_have_sqlstates() {
        let e = PgError::from(&PipelineError::RateLimited { class: "queries", retry_after_ms: 10, limit: 5 });
        assert_eq!((e.code, e.severity), ("53400", Severity::Error));
        assert_eq!(PgError::from(&PipelineError::Denied { reason: "no".into() }).code, "42501");
    }
}
