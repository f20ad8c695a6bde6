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

/// Why an object or key/value key was refused; the message names the rule and is
/// safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKey {
    #[error("invalid key: it is empty")]
    Empty,
    #[error("invalid key: it is {len} bytes long; the limit is {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("invalid key: it contains the control character U+{0:04X}")]
    ControlChar(u32),
    #[error("invalid key: it has an empty segment (a leading or trailing '/', or '//')")]
    EmptySegment,
    #[error("invalid key: it has a '.' or '..' segment")]
    DotSegment,
}

impl crate::error::ClientError for InvalidKey {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::User
    }
}

/// Checks shared by every key kind: length in bytes and no control characters.
fn check_key_text(raw: &str, max: usize) -> Result<(), InvalidKey> {
    if raw.is_empty() {
        return Err(InvalidKey::Empty);
    }
    if raw.len() > max {
        return Err(InvalidKey::TooLong { len: raw.len(), max });
    }
    match raw.chars().find(|c| c.is_control()) {
        Some(c) => Err(InvalidKey::ControlChar(u32::from(c))),
        None => Ok(()),
    }
}

/// The key of an object inside its tenant's bucket: 1..=1024 bytes of UTF-8, no
/// control characters, `/`-separated segments none of which is empty, `.` or
/// `..`. The segment rules keep keys unambiguous as paths (no `a//b`, no
/// traversal-looking names), whatever the store or a client library would make
/// of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub const MAX_BYTES: usize = 1024;

    pub fn parse(raw: &str) -> Result<Self, InvalidKey> {
        check_key_text(raw, Self::MAX_BYTES)?;
        for segment in raw.split('/') {
            match segment {
                "" => return Err(InvalidKey::EmptySegment),
                "." | ".." => return Err(InvalidKey::DotSegment),
                _ => {}
            }
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key of a key/value entry: 1..=512 bytes of UTF-8, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct KvKey(String);

impl KvKey {
    pub const MAX_BYTES: usize = 512;

    pub fn parse(raw: &str) -> Result<Self, InvalidKey> {
        check_key_text(raw, Self::MAX_BYTES)?;
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
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

    #[test]
    fn object_keys() {
        for ok in ["a", "a/b", "dir/file.txt", "a.b/..c/d..", "...", "sluice-other/x", "emoji/\u{1f600}", "sp ace"] {
            assert!(ObjectKey::parse(ok).is_ok(), "{ok}");
        }
        let max = "k".repeat(ObjectKey::MAX_BYTES);
        assert!(ObjectKey::parse(&max).is_ok());
        let cases = [
            ("", InvalidKey::Empty),
            ("a//b", InvalidKey::EmptySegment),
            ("/a", InvalidKey::EmptySegment),
            ("a/", InvalidKey::EmptySegment),
            ("/", InvalidKey::EmptySegment),
            (".", InvalidKey::DotSegment),
            ("..", InvalidKey::DotSegment),
            ("a/./b", InvalidKey::DotSegment),
            ("../b", InvalidKey::DotSegment),
            ("a/..", InvalidKey::DotSegment),
            ("a\nb", InvalidKey::ControlChar(0x0a)),
            ("a\u{7f}", InvalidKey::ControlChar(0x7f)),
            ("a\u{85}", InvalidKey::ControlChar(0x85)),
        ];
        for (raw, want) in cases {
            assert_eq!(ObjectKey::parse(raw), Err(want), "{raw:?}");
        }
        let long = format!("{max}k");
        assert_eq!(ObjectKey::parse(&long), Err(InvalidKey::TooLong { len: 1025, max: 1024 }));
        // The limit is in bytes, not characters.
        let multibyte = "\u{e9}".repeat(513);
        assert!(matches!(ObjectKey::parse(&multibyte), Err(InvalidKey::TooLong { len: 1026, .. })));
        assert!(InvalidKey::DotSegment.to_string().contains("'..'"));
    }

    #[test]
    fn kv_keys() {
        for ok in ["a", "a//b", "../x", "user:42", &"k".repeat(KvKey::MAX_BYTES)] {
            assert!(KvKey::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(KvKey::parse(""), Err(InvalidKey::Empty));
        assert_eq!(KvKey::parse("a\tb"), Err(InvalidKey::ControlChar(9)));
        assert_eq!(KvKey::parse(&"k".repeat(513)), Err(InvalidKey::TooLong { len: 513, max: 512 }));
    }
}
