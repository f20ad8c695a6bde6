//! Checksums S3 clients send with a body (`x-amz-checksum-<algorithm>` as a
//! header, or as an `aws-chunked` trailer named by `x-amz-trailer`): CRC32,
//! CRC32C, CRC64NVME, SHA-1 and SHA-256 (the hashes are s3s's).
//!
//! [`Verify`] computes the checksum while the body streams and holds back the
//! last chunk until it has compared it with the expected value, so a body
//! whose checksum does not match never reaches the store complete: the
//! upload fails and nothing is stored. A verified checksum is stored in the
//! object's metadata under [`META_KEY`] (reserved; neither door shows it as
//! user metadata) and returned on GET/HEAD when asked for.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use bytes::Bytes;
use futures::Stream;
use s3s::crypto::{Checksum as _, Crc32, Crc32c, Crc64Nvme, Md5, Sha1, Sha256};

/// Metadata name of a stored checksum (`ALGORITHM:base64`).
pub const META_KEY: &str = "sluice-checksum";
/// User metadata names may not start with this: the gateway's own.
pub const RESERVED_META_PREFIX: &str = "sluice-";

/// The algorithms S3 defines, by their S3 names.
pub const ALGORITHMS: [&str; 5] = ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"];
/// `Content-MD5`: verified like the others, never stored.
pub const CONTENT_MD5: &str = "MD5";

enum Hasher {
    Crc32(Crc32),
    Crc32c(Crc32c),
    Crc64Nvme(Crc64Nvme),
    Sha1(Sha1),
    Sha256(Sha256),
    Md5(Md5),
}

impl Hasher {
    fn new(algorithm: &str) -> Option<Self> {
        Some(match algorithm {
            "CRC32" => Hasher::Crc32(Crc32::new()),
            "CRC32C" => Hasher::Crc32c(Crc32c::new()),
            "CRC64NVME" => Hasher::Crc64Nvme(Crc64Nvme::new()),
            "SHA1" => Hasher::Sha1(Sha1::new()),
            "SHA256" => Hasher::Sha256(Sha256::new()),
            CONTENT_MD5 => Hasher::Md5(Md5::new()),
            _ => return None,
        })
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Crc32(h) => h.update(data),
            Hasher::Crc32c(h) => h.update(data),
            Hasher::Crc64Nvme(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Md5(h) => h.update(data),
        }
    }

    fn finalize(self) -> String {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        match self {
            Hasher::Crc32(h) => b64(&h.finalize()),
            Hasher::Crc32c(h) => b64(&h.finalize()),
            Hasher::Crc64Nvme(h) => b64(&h.finalize()),
            Hasher::Sha1(h) => b64(h.finalize().as_ref()),
            Hasher::Sha256(h) => b64(h.finalize().as_ref()),
            Hasher::Md5(h) => b64(h.finalize().as_ref()),
        }
    }
}

/// The base64 checksum of `data` under `algorithm` (an S3 name), or `None`
/// for an unknown algorithm.
pub fn digest(algorithm: &str, data: &[u8]) -> Option<String> {
    let mut h = Hasher::new(algorithm)?;
    h.update(data);
    Some(h.finalize())
}

/// The S3 name of the algorithm a trailer or header name stands for
/// (`x-amz-checksum-crc32` → `CRC32`).
pub fn algorithm_of_header(name: &str) -> Option<&'static str> {
    let suffix = name.trim().to_ascii_lowercase();
    let suffix = suffix.strip_prefix("x-amz-checksum-")?;
    ALGORITHMS.into_iter().find(|a| a.eq_ignore_ascii_case(suffix))
}

/// Where the expected value comes from.
pub enum Expected {
    /// A header: known before the body.
    Header(String),
    /// A trailer: read when the body has ended.
    Trailer(s3s::TrailingHeaders),
}

/// How a verified body ended, shared with the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Outcome {
    #[default]
    Pending,
    /// `ALGORITHM:base64`, checked.
    Verified(String),
    /// The body's checksum differs from the one sent (or the trailer is missing).
    Mismatch(String),
}

/// A shared view of a [`Verify`]'s outcome.
#[derive(Debug, Clone, Default)]
pub struct Slot(Arc<Mutex<Outcome>>);

impl Slot {
    pub fn get(&self) -> Outcome {
        self.0.lock().map(|o| o.clone()).unwrap_or_default()
    }

    fn set(&self, o: Outcome) {
        if let Ok(mut g) = self.0.lock() {
            *g = o;
        }
    }
}

/// A body stream that checks its checksum (see the module docs).
pub struct Verify<S> {
    inner: Pin<Box<S>>,
    algorithm: &'static str,
    hasher: Option<Hasher>,
    expected: Option<Expected>,
    held: Option<Bytes>,
    slot: Slot,
}

impl<S> Verify<S> {
    /// Check `inner` against `expected` under `algorithm` (an entry of
    /// [`ALGORITHMS`]); the outcome lands in the returned [`Slot`].
    pub fn new(inner: S, algorithm: &'static str, expected: Expected) -> (Self, Slot) {
        let slot = Slot::default();
        let v = Verify {
            inner: Box::pin(inner),
            algorithm,
            hasher: Hasher::new(algorithm),
            expected: Some(expected),
            held: None,
            slot: slot.clone(),
        };
        (v, slot)
    }

    fn verdict(&mut self) -> Result<(), String> {
        let computed = self.hasher.take().map(Hasher::finalize).unwrap_or_default();
        let header = if self.algorithm == CONTENT_MD5 {
            "Content-MD5".to_owned()
        } else {
            format!("x-amz-checksum-{}", self.algorithm.to_ascii_lowercase())
        };
        let expected = match self.expected.take() {
            Some(Expected::Header(v)) => Some(v),
            Some(Expected::Trailer(t)) => {
                t.read(|h| h.get(header.as_str()).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned())).flatten()
            }
            None => None,
        };
        match expected {
            Some(e) if e == computed => {
                self.slot.set(Outcome::Verified(format!("{}:{computed}", self.algorithm)));
                Ok(())
            }
            Some(e) => {
                let msg =
                    format!("The {} you specified did not match the calculated checksum ({e} ≠ {computed}).", header);
                self.slot.set(Outcome::Mismatch(msg.clone()));
                Err(msg)
            }
            None => {
                let msg = format!("the body announced a {header} trailer but did not send it");
                self.slot.set(Outcome::Mismatch(msg.clone()));
                Err(msg)
            }
        }
    }
}

impl<S, E> Stream for Verify<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.hasher.is_none() {
                // Verified: release the held chunk, then end.
                return Poll::Ready(self.held.take().map(Ok));
            }
            match ready!(self.inner.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    if let Some(h) = self.hasher.as_mut() {
                        h.update(&chunk);
                    }
                    if let Some(prev) = self.held.replace(chunk) {
                        return Poll::Ready(Some(Ok(prev)));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.to_string()))),
                None => {
                    if let Err(msg) = self.verdict() {
                        self.held = None;
                        return Poll::Ready(Some(Err(msg)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn body(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + use<> {
        futures::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    #[test]
    fn known_digests() {
        // The CRC32 of "hello world", as AWS documents it.
        assert_eq!(digest("CRC32", b"hello world").as_deref(), Some("DUoRhQ=="));
        assert_eq!(digest("SHA256", b"").as_deref(), Some("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="));
        assert_eq!(digest("MD5", b"").as_deref(), Some("1B2M2Y8AsgTpgAmY7PhCfg=="));
        assert_eq!(digest("XXH3", b""), None);
        assert_eq!(algorithm_of_header("X-Amz-Checksum-Crc64nvme"), Some("CRC64NVME"));
        assert_eq!(algorithm_of_header("x-amz-meta-a"), None);
    }

    #[tokio::test]
    async fn a_matching_body_passes_whole() {
        let expected = digest("CRC32C", b"hello world").expect("digest");
        let (v, slot) = Verify::new(body(&[b"hello", b" ", b"world"]), "CRC32C", Expected::Header(expected.clone()));
        let out: Vec<_> = v.collect().await;
        let joined: Vec<u8> = out.into_iter().flat_map(|c| c.expect("chunk").to_vec()).collect();
        assert_eq!(joined, b"hello world");
        assert_eq!(slot.get(), Outcome::Verified(format!("CRC32C:{expected}")));
    }

    #[tokio::test]
    async fn a_mismatch_withholds_the_last_chunk() {
        let (v, slot) = Verify::new(body(&[b"hello", b" world"]), "SHA1", Expected::Header("AAAA".into()));
        let out: Vec<_> = v.collect().await;
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].as_deref().ok(), Some(&b"hello"[..]));
        assert!(out[1].is_err());
        assert!(matches!(slot.get(), Outcome::Mismatch(_)));
    }
}
