//! Sealing and opening backup parts: zstd, then age (X25519 recipients,
//! authenticated streaming encryption — no crypto of our own).
//!
//! Keys: the operator's backup key (an age identity in config) wraps one
//! **data key** per tenant (another age identity, stored wrapped in the
//! target). Every part is encrypted to the data key's recipient and to any
//! public keys the tenant added, so a tenant can open its own backups with
//! its own key. Content ids of deduplicated objects are keyed hashes
//! (HMAC-SHA256 under a key derived from the data key), so the target does
//! not reveal plaintext hashes.

use std::io::{self, Read, Write};
use std::str::FromStr;

use age::x25519;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::BackupError;
use crate::config::BackupConfig;
use crate::secret::{ExposeSecret, SecretString};

/// The operator's keys: the current one wraps, every one unwraps.
pub struct Keyring {
    current: x25519::Identity,
    all: Vec<x25519::Identity>,
}

impl Keyring {
    pub fn from_config(cfg: &BackupConfig) -> Result<Self, BackupError> {
        let parse = |s: &SecretString, what: &str| {
            x25519::Identity::from_str(s.expose_secret().trim()).map_err(|e| {
                BackupError::Config(format!("{what} is not an age X25519 identity (AGE-SECRET-KEY-1…): {e}"))
            })
        };
        if cfg.operator_key.expose_secret().trim().is_empty() {
            return Err(BackupError::Config(
                "backup.operator_key is not set (generate one with `sluice backup keygen`)".into(),
            ));
        }
        let current = parse(&cfg.operator_key, "backup.operator_key")?;
        let mut all = vec![current.clone()];
        for (i, k) in cfg.previous_operator_keys.iter().enumerate() {
            all.push(parse(k, &format!("backup.previous_operator_keys[{i}]"))?);
        }
        Ok(Self { current, all })
    }

    /// The current key's public half.
    pub fn recipient(&self) -> x25519::Recipient {
        self.current.to_public()
    }

    /// Wrap a tenant's data key to the current operator key.
    pub fn wrap(&self, data: &DataKey) -> Result<Vec<u8>, BackupError> {
        let r = self.recipient();
        let mut out = Vec::new();
        let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
            .map_err(|e| BackupError::Crypto(format!("wrap data key: {e}")))?;
        let mut w = enc.wrap_output(&mut out).map_err(|e| BackupError::Crypto(e.to_string()))?;
        w.write_all(data.identity.to_string().expose_secret().as_bytes())
            .map_err(|e| BackupError::Crypto(e.to_string()))?;
        w.finish().map_err(|e| BackupError::Crypto(e.to_string()))?;
        Ok(out)
    }

    /// Unwrap a data key with any operator key.
    pub fn unwrap(&self, wrapped: &[u8]) -> Result<DataKey, BackupError> {
        let dec = age::Decryptor::new_buffered(wrapped)
            .map_err(|e| BackupError::Crypto(format!("the tenant's data key is not an age file: {e}")))?;
        let ids = self.all.iter().map(|i| i as &dyn age::Identity);
        let mut r = dec.decrypt(ids).map_err(|e| {
            BackupError::Crypto(format!("the tenant's data key does not open with the operator's backup keys: {e}"))
        })?;
        let mut text = String::new();
        r.read_to_string(&mut text).map_err(|e| BackupError::Crypto(format!("data key: {e}")))?;
        let identity = x25519::Identity::from_str(text.trim())
            .map_err(|e| BackupError::Crypto(format!("the tenant's data key is malformed: {e}")))?;
        Ok(DataKey::from_identity(identity))
    }
}

/// A tenant's data key.
#[derive(Clone)]
pub struct DataKey {
    identity: x25519::Identity,
}

impl DataKey {
    pub fn generate() -> Self {
        Self::from_identity(x25519::Identity::generate())
    }

    fn from_identity(identity: x25519::Identity) -> Self {
        Self { identity }
    }

    pub fn recipient(&self) -> x25519::Recipient {
        self.identity.to_public()
    }

    pub fn identity(&self) -> &x25519::Identity {
        &self.identity
    }

    /// The content id of a plaintext sha256 under a recipient set: equal
    /// content under the same recipients is stored once.
    pub fn content_id(&self, recipients: &Recipients, plain_sha256: &[u8; 32]) -> String {
        let mut key = Sha256::new();
        key.update(b"sluice-backup-content-id\0");
        key.update(self.identity.to_string().expose_secret().as_bytes());
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key.finalize()) else {
            // HMAC takes keys of any length; unreachable.
            return hex::encode(plain_sha256);
        };
        mac.update(recipients.fingerprint().as_bytes());
        mac.update(plain_sha256);
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Who a part is encrypted to: the tenant's data key and the tenant's own
/// public keys.
#[derive(Clone)]
pub struct Recipients {
    list: Vec<x25519::Recipient>,
}

impl Recipients {
    pub fn new(data: &DataKey, tenant_keys: &[String]) -> Result<Self, BackupError> {
        let mut list = vec![data.recipient()];
        for k in tenant_keys {
            list.push(parse_recipient(k)?);
        }
        Ok(Self { list })
    }

    /// Stable text naming the set (sorted public keys).
    pub fn fingerprint(&self) -> String {
        let mut keys: Vec<String> = self.list.iter().map(ToString::to_string).collect();
        keys.sort();
        keys.join(",")
    }

    fn encryptor(&self) -> Result<age::Encryptor, BackupError> {
        age::Encryptor::with_recipients(self.list.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| BackupError::Crypto(e.to_string()))
    }
}

/// Parse a tenant's age public key (`age1…`).
pub fn parse_recipient(text: &str) -> Result<x25519::Recipient, BackupError> {
    x25519::Recipient::from_str(text.trim())
        .map_err(|e| BackupError::Invalid(format!("not an age X25519 public key (age1…): {e}")))
}

/// Size and sha256 of a byte stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest256 {
    pub len: u64,
    pub sha256: [u8; 32],
}

impl Digest256 {
    pub fn hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// A writer that hashes and counts what passes through it.
pub struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hash: Sha256::new(), len: 0 }
    }

    pub fn finish(self) -> (W, Digest256) {
        (self.inner, Digest256 { len: self.len, sha256: self.hash.finalize().into() })
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    len: u64,
}

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, hash: Sha256::new(), len: 0 }
    }
    pub fn digest(&self) -> Digest256 {
        Digest256 { len: self.len, sha256: self.hash.clone().finalize().into() }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// What sealing a part produced: the plaintext's and the stored bytes' digests.
#[derive(Debug, Clone, Copy)]
pub struct Sealed {
    pub plain: Digest256,
    pub stored: Digest256,
}

/// Plaintext in, compressed and encrypted bytes out to `sink`.
pub struct Sealer<W: Write> {
    inner: Hashing<zstd::Encoder<'static, age::stream::StreamWriter<Hashing<W>>>>,
}

impl<W: Write> Sealer<W> {
    pub fn new(sink: W, to: &Recipients, level: i32) -> Result<Self, BackupError> {
        let age = to.encryptor()?.wrap_output(Hashing::new(sink)).map_err(io_err)?;
        let zstd = zstd::Encoder::new(age, level).map_err(io_err)?;
        Ok(Self { inner: Hashing::new(zstd) })
    }

    /// Flush every layer and return the sink with the digests.
    pub fn finish(self) -> Result<(W, Sealed), BackupError> {
        let (zstd, plain) = self.inner.finish();
        let age = zstd.finish().map_err(io_err)?;
        let hashing = age.finish().map_err(io_err)?;
        let (sink, stored) = hashing.finish();
        Ok((sink, Sealed { plain, stored }))
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Open a sealed part: stored bytes in, plaintext out. Authentication
/// failures (a flipped byte, a truncated stream, the wrong key) surface as
/// read errors; callers name the part.
pub fn opener<'a, R: Read + 'a>(stored: R, key: &DataKey) -> Result<Box<dyn Read + 'a>, BackupError> {
    let dec = age::Decryptor::new(stored).map_err(|e| BackupError::Crypto(format!("not an age stream: {e}")))?;
    let r = dec
        .decrypt(std::iter::once(key.identity() as &dyn age::Identity))
        .map_err(|e| BackupError::Crypto(format!("does not open with the tenant's data key: {e}")))?;
    let z = zstd::Decoder::new(r).map_err(|e| BackupError::Crypto(e.to_string()))?;
    Ok(Box::new(z))
}

/// Open a sealed part with a tenant's own identity (`AGE-SECRET-KEY-1…`).
pub fn opener_with<'a, R: Read + 'a>(stored: R, identity: &str) -> Result<Box<dyn Read + 'a>, BackupError> {
    let id = x25519::Identity::from_str(identity.trim())
        .map_err(|e| BackupError::Invalid(format!("not an age identity: {e}")))?;
    opener(stored, &DataKey::from_identity(id))
}

/// Seal a small in-memory value.
pub fn seal_bytes(plain: &[u8], to: &Recipients, level: i32) -> Result<(Vec<u8>, Sealed), BackupError> {
    let mut s = Sealer::new(Vec::with_capacity(plain.len() / 2 + 1024), to, level)?;
    s.write_all(plain).map_err(io_err)?;
    s.finish()
}

/// Open a small sealed value, at most `max` plaintext bytes.
pub fn open_bytes(stored: &[u8], key: &DataKey, max: u64) -> Result<Vec<u8>, BackupError> {
    let mut out = Vec::new();
    opener(stored, key)?.take(max + 1).read_to_end(&mut out).map_err(|e| BackupError::Crypto(e.to_string()))?;
    if out.len() as u64 > max {
        return Err(BackupError::Crypto(format!("larger than {max} bytes")));
    }
    Ok(out)
}

/// A new operator key: (identity, public key).
pub fn keygen() -> (SecretString, String) {
    let id = x25519::Identity::generate();
    (id.to_string().expose_secret().to_owned().into(), id.to_public().to_string())
}

fn io_err(e: io::Error) -> BackupError {
    BackupError::Crypto(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Keyring {
        let (k, _) = keygen();
        let cfg = BackupConfig { operator_key: k, ..BackupConfig::default() };
        Keyring::from_config(&cfg).expect("keyring")
    }

    #[test]
    fn seal_open_round_trip_and_tamper_is_refused() {
        let data = DataKey::generate();
        let to = Recipients::new(&data, &[]).expect("recipients");
        let plain = b"hello backup ".repeat(10_000);
        let (mut stored, sealed) = seal_bytes(&plain, &to, 3).expect("seal");
        assert_eq!(sealed.plain.len, plain.len() as u64);
        assert_eq!(sealed.stored.len, stored.len() as u64);
        assert!(stored.len() < plain.len() / 10, "compressed");
        assert_eq!(open_bytes(&stored, &data, 1 << 20).expect("open"), plain);
        // A flipped byte in the payload.
        let at = stored.len() - 20;
        stored[at] ^= 1;
        assert!(open_bytes(&stored, &data, 1 << 20).is_err());
        stored[at] ^= 1;
        // Truncated.
        assert!(open_bytes(&stored[..stored.len() - 10], &data, 1 << 20).is_err());
        // Wrong key.
        assert!(open_bytes(&stored, &DataKey::generate(), 1 << 20).is_err());
    }

    #[test]
    fn data_key_wraps_and_tenant_key_opens() {
        let ring = keyring();
        let data = DataKey::generate();
        let wrapped = ring.wrap(&data).expect("wrap");
        let back = ring.unwrap(&wrapped).expect("unwrap");
        assert_eq!(back.recipient().to_string(), data.recipient().to_string());
        assert!(keyring().unwrap(&wrapped).is_err(), "another operator key");

        let (tenant_id, tenant_pub) = keygen();
        let to = Recipients::new(&data, &[tenant_pub]).expect("recipients");
        let (stored, _) = seal_bytes(b"rows", &to, 3).expect("seal");
        let mut out = Vec::new();
        opener_with(&stored[..], tenant_id.expose_secret()).expect("open").read_to_end(&mut out).expect("read");
        assert_eq!(out, b"rows");
        let none = Recipients::new(&data, &[]).expect("recipients");
        assert_ne!(data.content_id(&to, &[0; 32]), data.content_id(&none, &[0; 32]));
    }
}
