//! API keys and the secrets derived from them.
//!
//! A key looks like `slk_<prefix>_<secret>`: a 12-character public prefix (how the
//! key is named in lists and the audit log) and a 32-character random secret
//! (~190 bits). The control plane stores only SHA-256 of the whole key (enough
//! for a high-entropy secret; no slow hash needed) and a SCRAM-SHA-256 verifier
//! (StoredKey, ServerKey) for the Postgres door. The key itself is shown once.
//!
//! All keys of a tenant share the tenant's SCRAM salt and iteration count. SCRAM
//! sends the salt before the client proves anything, and the Postgres door only
//! knows the tenant (the user name) at that point; with a shared salt it can check
//! the proof against each of the tenant's keys.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::ids::{KeyPrefix, TenantId};
use crate::secret::{ExposeSecret, SecretString};

type HmacSha256 = Hmac<Sha256>;

const KEY_TAG: &str = "slk_";
const PREFIX_LEN: usize = 12;
const SECRET_LEN: usize = 32;

/// SCRAM-SHA-256 keys derived from a password (RFC 5802 / RFC 7677).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

/// A freshly generated API key with everything the control plane stores.
pub struct GeneratedKey {
    pub prefix: KeyPrefix,
    /// The whole key; shown to the caller once and then dropped.
    pub key: SecretString,
    pub sha256: [u8; 32],
    pub scram: ScramKeys,
}

/// Why a presented key could not even be looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedKey;

/// Generate a new key for a tenant whose SCRAM salt and iterations are given.
pub fn generate_key(salt: &[u8], iterations: u32) -> GeneratedKey {
    let mut rng = rand::rng();
    let prefix: String = (0..PREFIX_LEN).map(|_| pick(&mut rng, b"abcdefghijklmnopqrstuvwxyz0123456789")).collect();
    let secret: String = (0..SECRET_LEN)
        .map(|_| pick(&mut rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"))
        .collect();
    let key = format!("{KEY_TAG}{prefix}_{secret}");
    GeneratedKey {
        prefix: KeyPrefix(prefix),
        sha256: sha256(key.as_bytes()),
        scram: scram_keys(key.as_bytes(), salt, iterations),
        key: SecretString::from(key),
    }
}

fn pick(rng: &mut impl Rng, alphabet: &[u8]) -> char {
    char::from(alphabet[rng.random_range(0..alphabet.len())])
}

/// A fresh random SCRAM salt (16 bytes).
pub fn new_salt() -> Vec<u8> {
    let mut salt = vec![0u8; 16];
    rand::rng().fill(&mut salt[..]);
    salt
}

/// Split a presented key into its prefix, checking the shape only.
pub fn parse_key(raw: &str) -> Result<KeyPrefix, MalformedKey> {
    let rest = raw.strip_prefix(KEY_TAG).ok_or(MalformedKey)?;
    let (prefix, secret) = rest.split_once('_').ok_or(MalformedKey)?;
    let ok = prefix.len() == PREFIX_LEN
        && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && secret.len() == SECRET_LEN
        && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok { Ok(KeyPrefix(prefix.to_owned())) } else { Err(MalformedKey) }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// SaltedPassword → (StoredKey, ServerKey). The password must already be
/// SASLprep-normalised; API keys and derived role passwords are plain ASCII
/// alphanumerics, for which SASLprep is the identity.
pub fn scram_keys(password: &[u8], salt: &[u8], iterations: u32) -> ScramKeys {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    ScramKeys { stored_key: sha256(&client_key), server_key: hmac(&salted, b"Server Key") }
}

/// The verifier text Postgres accepts in `CREATE ROLE … PASSWORD '…'`, so the
/// plaintext never reaches the server (or its logs).
pub fn postgres_verifier(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let k = scram_keys(password, salt, iterations);
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(k.stored_key),
        STANDARD.encode(k.server_key)
    )
}

/// The password of the role that owns a tenant's collection tables
/// (`<tenant role>_gw`), derived like [`tenant_role_password`] in a context
/// of its own.
pub fn collection_owner_password(master_key: &SecretString, tenant: TenantId) -> SecretString {
    let tag = format!("sluice/collection-owner-password/v1:{tenant}");
    SecretString::from(URL_SAFE_NO_PAD.encode(hmac(master_key.expose_secret().as_bytes(), tag.as_bytes())))
}

/// The password of a tenant's Postgres role, derived from the master key so every
/// gateway instance can compute it and nothing needs storing.
pub fn tenant_role_password(master_key: &SecretString, tenant: TenantId) -> SecretString {
    let tag = format!("sluice/tenant-role-password/v1:{tenant}");
    SecretString::from(URL_SAFE_NO_PAD.encode(hmac(master_key.expose_secret().as_bytes(), tag.as_bytes())))
}

/// The secret access key of an S3 credential, derived from the master key and
/// the access key id (so it is never stored): 40 characters of URL-safe base64,
/// the length of an AWS secret key.
pub fn s3_secret(master_key: &SecretString, access_key_id: &str) -> SecretString {
    let tag = format!("s3-secret:{access_key_id}");
    let full = URL_SAFE_NO_PAD.encode(hmac(master_key.expose_secret().as_bytes(), tag.as_bytes()));
    SecretString::from(full.chars().take(40).collect::<String>())
}

/// A fresh S3 access key id: `SLU` and 17 upper-case letters or digits.
pub fn new_s3_access_key_id() -> String {
    let mut rng = rand::rng();
    let tail: String = (0..17).map(|_| pick(&mut rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")).collect();
    format!("SLU{tail}")
}

/// SCRAM server side: does `proof` (the client's ClientProof) match `stored_key`
/// for `auth_message`? ClientKey = proof XOR HMAC(StoredKey, AuthMessage);
/// the proof is right when SHA-256(ClientKey) equals StoredKey. Constant time.
pub fn scram_proof_matches(stored_key: &[u8], auth_message: &[u8], proof: &[u8]) -> bool {
    if proof.len() != 32 || stored_key.len() != 32 {
        return false;
    }
    let signature = hmac(stored_key, auth_message);
    let mut client_key = [0u8; 32];
    for (i, b) in client_key.iter_mut().enumerate() {
        *b = proof[i] ^ signature[i];
    }
    crate::secret::ct_eq(&sha256(&client_key), stored_key)
}

/// SCRAM ServerSignature = HMAC(ServerKey, AuthMessage).
pub fn scram_server_signature(server_key: &[u8], auth_message: &[u8]) -> [u8; 32] {
    hmac(server_key, auth_message)
}

/// The salt sent to a client that named a tenant that does not exist:
/// deterministic (the same name always gets the same salt) and
/// indistinguishable from a real one without the master key.
pub fn fake_scram_salt(master_key: &SecretString, user: &str) -> Vec<u8> {
    let tag = format!("sluice/scram-fake-salt/v1:{user}");
    hmac(master_key.expose_secret().as_bytes(), tag.as_bytes())[..16].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let salt = new_salt();
        let a = generate_key(&salt, 4096);
        let b = generate_key(&salt, 4096);
        assert_ne!(a.key.expose_secret(), b.key.expose_secret());
        assert_eq!(parse_key(a.key.expose_secret()), Ok(a.prefix.clone()));
        assert_eq!(a.sha256, sha256(a.key.expose_secret().as_bytes()));
    }

    #[test]
    fn malformed_keys() {
        for bad in [
            "",
            "slk_",
            "slk_abc_def",
            "xyz_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            "slk_AAAAAAAAAAAA_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            "slk_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb!",
        ] {
            assert_eq!(parse_key(bad), Err(MalformedKey), "{bad}");
        }
    }

    /// RFC 7677 section 3 test vector (user "user", password "pencil").
    #[test]
    fn scram_matches_rfc7677() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("b64");
        let k = scram_keys(b"pencil", &salt, 4096);
        let salted = {
            let mut s = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(b"pencil", &salt, 4096, &mut s);
            s
        };
        let client_key = hmac(&salted, b"Client Key");
        assert_eq!(k.stored_key, sha256(&client_key));
        // The RFC's server signature check: ServerSignature = HMAC(ServerKey, AuthMessage).
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server_sig = hmac(&k.server_key, auth_message.as_bytes());
        assert_eq!(STANDARD.encode(server_sig), "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn scram_proof_round_trip() {
        let salt = new_salt();
        let k = scram_keys(b"slk_secret", &salt, 4096);
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"slk_secret", &salt, 4096, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let sig = hmac(&k.stored_key, b"auth-message");
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        assert!(scram_proof_matches(&k.stored_key, b"auth-message", &proof));
        assert!(!scram_proof_matches(&k.stored_key, b"other-message", &proof));
        assert!(!scram_proof_matches(&k.stored_key, b"auth-message", &proof[..31]));
        let mk = SecretString::from("m".repeat(32));
        assert_eq!(fake_scram_salt(&mk, "a"), fake_scram_salt(&mk, "a"));
        assert_ne!(fake_scram_salt(&mk, "a"), fake_scram_salt(&mk, "b"));
    }
}
