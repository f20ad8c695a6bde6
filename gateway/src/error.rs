//! Error kinds shared by every door.
//!
//! Each module has its own `thiserror` enum; each client-visible error maps to an
//! [`ErrorKind`] via [`ClientError`]. Errors reach the wire in exactly two places:
//! the HTTP error mapper (`frontend::http::error`) and the Postgres `ErrorResponse`
//! builder (the pg door). Messages returned by [`ClientError::client_message`] are
//! an allowlist: internal details (SQL, hostnames, stack) stay in the log.

/// Who is to blame, and so what status a client sees and whether a retry helps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or invalid (400/422).
    User,
    /// No or bad credentials (401).
    Auth,
    /// Authenticated but not allowed (403).
    Forbidden,
    /// The thing does not exist (for this tenant) (404).
    NotFound,
    /// The thing exists already or is in the wrong state (409).
    Conflict,
    /// The request is larger than allowed (413).
    TooLarge,
    /// Rate limited (429, retry later).
    RateLimit,
    /// A quota is exhausted (429/403 depending on door).
    Quota,
    /// A storage quota is full: writes are refused until data is deleted or
    /// the quota raised (403; SQLSTATE 53100 on the Postgres door).
    StorageFull,
    /// A tenant plugin failed or denied.
    Plugin,
    /// A data service is unreachable or failed (503, retry helps).
    Upstream,
    /// A bug or an unexpected state on our side (500).
    Internal,
}

impl ErrorKind {
    pub fn retryable(self) -> bool {
        matches!(self, ErrorKind::RateLimit | ErrorKind::Upstream)
    }

    /// Stable machine-readable code used in JSON errors.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::User => "bad_request",
            ErrorKind::Auth => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::TooLarge => "payload_too_large",
            ErrorKind::RateLimit => "rate_limited",
            ErrorKind::Quota | ErrorKind::StorageFull => "quota_exceeded",
            ErrorKind::Plugin => "plugin_error",
            ErrorKind::Upstream => "upstream_unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error that knows how to present itself to a client.
pub trait ClientError: std::error::Error {
    fn kind(&self) -> ErrorKind;
    /// A message safe to show the client. Defaults to a generic text for
    /// internal and upstream errors and to `Display` otherwise.
    fn client_message(&self) -> String {
        match self.kind() {
            ErrorKind::Internal => "internal error; see the gateway log for the request id".into(),
            ErrorKind::Upstream => "a data service is unavailable; retry later".into(),
            _ => self.to_string(),
        }
    }
}
