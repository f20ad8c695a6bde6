//! Secret strings: redacted in `Debug`, never logged, readable only on purpose.

pub use secrecy::{ExposeSecret, SecretString};

/// Constant-time equality of two byte strings (length is not hidden).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
