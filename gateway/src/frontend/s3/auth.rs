//! S3 door authentication and access: the secret of an access key for s3s's
//! SigV4 check, then the key's tenant, bucket, read-only and prefix limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{S3Result, s3_error};

use super::error::auth_error;
use crate::control::credentials::s3_secret;
use crate::control::s3_credentials;
use crate::control::s3_credentials::S3CredentialRecord;
use crate::pipeline::auth::{Principal, S3Grant, authenticate_s3, s3_principal};
use crate::ratelimit::Class;
use crate::secret::ExposeSecret;
use crate::services::Services;

/// The record of an access key looked up for a request's signature check,
/// handed to that request's access check so the control plane is asked once
/// per request (a record older than [`HANDOFF_TTL`] is looked up again).
#[derive(Clone, Default)]
pub struct Handoff(Arc<Mutex<HashMap<String, (Instant, S3CredentialRecord)>>>);

const HANDOFF_TTL: Duration = Duration::from_secs(2);
/// Entries kept at most (records of signatures that failed are never taken).
const HANDOFF_MAX: usize = 4096;

impl Handoff {
    fn put(&self, record: S3CredentialRecord) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= HANDOFF_MAX {
                m.retain(|_, (at, _)| at.elapsed() < HANDOFF_TTL);
            }
            if m.len() < HANDOFF_MAX {
                m.insert(record.access_key_id.clone(), (Instant::now(), record));
            }
        }
    }

    fn take(&self, access_key_id: &str) -> Option<S3CredentialRecord> {
        let (at, record) = self.0.lock().ok()?.remove(access_key_id)?;
        (at.elapsed() < HANDOFF_TTL).then_some(record)
    }
}

/// The secrets of access keys: derived from the master key, for keys that
/// exist and are not revoked.
pub struct KeyStore {
    svc: Services,
    handoff: Handoff,
}

impl KeyStore {
    pub fn new(svc: Services, handoff: Handoff) -> Self {
        Self { svc, handoff }
    }
}

#[async_trait::async_trait]
impl S3Auth for KeyStore {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        let c = self.svc.control.client().await.map_err(|e| {
            tracing::warn!(error = %e, "S3 door: control plane");
            s3_error!(ServiceUnavailable, "the control plane is unreachable; retry")
        })?;
        let record = s3_credentials::lookup(&c, access_key).await.map_err(|e| {
            tracing::warn!(error = %e, "S3 door: look up access key");
            s3_error!(ServiceUnavailable, "the control plane is unreachable; retry")
        })?;
        match record {
            Some(r) if !r.revoked => {
                self.handoff.put(r);
                Ok(SecretKey::from(s3_secret(&self.svc.config.auth.master_key, access_key).expose_secret()))
            }
            _ => {
                Err(s3_error!(InvalidAccessKeyId, "The AWS access key Id you provided does not exist in our records."))
            }
        }
    }
}

/// Who is calling, for the operations: set by [`Access`] on every request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub grant: S3Grant,
}

impl Caller {
    /// May this key reach `key`?
    pub fn check_key(&self, key: &str) -> S3Result<()> {
        if key.starts_with(&self.grant.prefix) {
            Ok(())
        } else {
            Err(s3_error!(AccessDenied, "this access key is limited to keys under its prefix"))
        }
    }
}

/// After the signature is verified: the tenant, its state and rate limit, and
/// whether this key may make this request at all.
pub struct Access {
    svc: Services,
    handoff: Handoff,
}

impl Access {
    pub fn new(svc: Services, handoff: Handoff) -> Self {
        Self { svc, handoff }
    }
}

/// Operations that only read (everything else writes). Bucket-level reads
/// other than these are not served anyway.
fn reads(method: &http::Method) -> bool {
    method == http::Method::GET || method == http::Method::HEAD
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(creds) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "requests must be signed"));
        };
        let (principal, grant) = match self.handoff.take(&creds.access_key) {
            Some(record) => s3_principal(record),
            None => authenticate_s3(&self.svc.control, &creds.access_key).await,
        }
        .map_err(auth_error)?;
        let operation = cx.s3_op().name().to_owned();
        if let Some(t) = cx.extensions_mut().get::<super::Tally>() {
            t.set(principal.tenant.as_str(), &operation);
        }
        // Every request costs one unit of the `http` class, as on the HTTP door.
        self.svc.ratelimit.admit_leased(&principal, Class::Http).await.map_err(super::error::pipeline_error)?;
        let caller = Caller { principal, grant };
        match cx.s3_path() {
            S3Path::Root => {}
            S3Path::Bucket { bucket } => {
                check_bucket(&caller, bucket)?;
            }
            S3Path::Object { bucket, key } => {
                check_bucket(&caller, bucket)?;
                caller.check_key(key)?;
            }
        }
        if caller.grant.read_only && !reads(cx.method()) {
            return Err(s3_error!(AccessDenied, "this access key is read-only"));
        }
        cx.extensions_mut().insert(caller);
        Ok(())
    }
}

/// The only bucket a key reaches is its tenant's (named as the tenant).
fn check_bucket(caller: &Caller, bucket: &str) -> S3Result<()> {
    if bucket == caller.principal.tenant.as_str() { Ok(()) } else { Err(s3_error!(AccessDenied, "Access Denied")) }
}
