//! Newtypes for identifiers that cross module boundaries.
//!
//! Every identifier that reaches SQL DDL (role and database names) or an S3 bucket
//! name is derived from a validated [`TenantName`], never from raw input.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Internal, immutable id of a tenant (control-plane primary key, Redis namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub Uuid);

impl TenantId {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Human name of a tenant: `^[a-z][a-z0-9-]{1,38}[a-z0-9]$`, no `--`.
///
/// The alphabet is the intersection of what S3 bucket names, Postgres identifiers
/// (after `-` → `_`) and Redis keys accept, so derived names need no escaping and
/// the mapping stays one-to-one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantName(String);

/// Why a tenant name was refused; the message is safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid tenant name {0:?}: use 3-40 characters a-z, 0-9 and '-', starting with a letter and not ending with '-' (no '--')"
)]
pub struct InvalidTenantName(pub String);

impl TenantName {
    pub fn parse(raw: &str) -> Result<Self, InvalidTenantName> {
        let bytes = raw.as_bytes();
        let ok_len = (3..=40).contains(&bytes.len());
        let ok_chars = bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        let ok_ends = bytes.first().is_some_and(u8::is_ascii_lowercase) && bytes.last().is_some_and(|b| *b != b'-');
        if ok_len && ok_chars && ok_ends && !raw.contains("--") {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidTenantName(raw.chars().take(64).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a Postgres identifier fragment (`-` → `_`).
    pub fn as_ident_fragment(&self) -> String {
        self.0.replace('-', "_")
    }
}

impl<'de> Deserialize<'de> for TenantName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        TenantName::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The public, non-secret prefix of an API key; it is how a key is named in lists,
/// logs and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyPrefix(pub String);

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an API key may do inside its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Manage keys, plugins and retention, and everything a service key does.
    Admin,
    /// Data-plane access only.
    Service,
}

impl KeyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Admin => "admin",
            KeyRole::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(KeyRole::Admin),
            "service" => Some(KeyRole::Service),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names() {
        for ok in ["acme", "a1b", "acme-corp", "t-1-2"] {
            assert!(TenantName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "Acme",
            "1abc",
            "abc-",
            "a--b",
            "a_b",
            "a.b",
            "a b",
            "ab\u{e9}",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(TenantName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(TenantName::parse("acme-corp").map(|n| n.as_ident_fragment()), Ok("acme_corp".into()));
    }
}
