//! Copy-before-write of a tenant's objects while its backup runs, so the
//! backup holds every object as of one moment although copying takes long.
//!
//! A running backup sets a **hold** for its tenant in Redis. From then on,
//! every object write of that tenant through the gateway (put, delete,
//! retention delete) first **claims** the key in the hold's claim table:
//! the first party to claim a key — a writer or the backup itself — copies
//! the object as it is (a server-side copy into the system bucket
//! `<prefix>sys--holds`) or records that it did not exist, before anyone
//! changes it. Later writers go straight through; a writer that finds a copy
//! in progress waits for it (a server-side copy: milliseconds). The backup
//! reads held copies instead of the live objects, and also takes the
//! objects deleted since the hold began (they are in the claim table).
//!
//! The database snapshot is taken right before the hold is set; writes
//! that were already past their claim step when it was set finish within
//! [`GRACE`], which the backup waits before it lists the bucket. Such an
//! in-flight write may land in the backup without its rows (an object no
//! row refers to yet); a write after the hold never does.
//!
//! Hand-written on purpose: no object store we support offers snapshots
//! or versioning across S3 implementations (Garage has none).

use std::time::Duration;

use aws_sdk_s3::types::MetadataDirective;
use sha2::{Digest, Sha256};

use crate::ids::TenantId;
use crate::services::Services;
use crate::upstream::s3::S3Error;

/// How long a hold lives without a heartbeat from its backup.
pub const HOLD_TTL: Duration = Duration::from_secs(60);
/// How long a backup waits after setting its hold, for writes already past
/// their claim.
pub const GRACE: Duration = Duration::from_secs(2);
/// A claim whose copy has not finished in this long is taken over.
const STALE_CLAIM: Duration = Duration::from_secs(30);
/// How long a writer waits for someone else's copy of the same key.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// KEYS[1] = hold, KEYS[2] = claims; ARGV[1] = object key, ARGV[2] = stale ms.
/// Returns {state, backup id}: state `none` (no hold), `mine` (copy it now),
/// `wait` (someone is copying), or the recorded `held`/`absent`/`kept`.
const CLAIM: &str = r"
local hold = redis.call('GET', KEYS[1])
if not hold then return {'none', ''} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if (not cur) or (string.sub(cur, 1, 2) == 'c:' and now - tonumber(string.sub(cur, 3)) > tonumber(ARGV[2])) then
  redis.call('HSET', KEYS[2], ARGV[1], 'c:' .. now)
  return {'mine', hold}
end
if string.sub(cur, 1, 2) == 'c:' then return {'wait', hold} end
return {cur, hold}
";

/// KEYS[1] = hold, KEYS[2] = claims; ARGV[1] = backup id. Refreshes the TTL
/// of a hold that is still this backup's.
const REFRESH: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
";

/// The state of a claimed key once its copy is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Copied to the hold area.
    Held,
    /// Did not exist when the hold began.
    Absent,
    /// Unchanged since the previous backup; the backup reuses that content.
    Kept,
}

impl Settled {
    fn as_str(self) -> &'static str {
        match self {
            Settled::Held => "held",
            Settled::Absent => "absent",
            Settled::Kept => "kept",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "held" => Some(Settled::Held),
            "absent" => Some(Settled::Absent),
            "kept" => Some(Settled::Kept),
            _ => None,
        }
    }
}

fn hold_key(svc: &Services, tenant: TenantId) -> String {
    format!("{}backup:hold", svc.redis.tenant_prefix(tenant))
}

fn claims_key(svc: &Services, tenant: TenantId) -> String {
    format!("{}backup:claims", svc.redis.tenant_prefix(tenant))
}

/// The system bucket of held copies.
pub fn holds_bucket(svc: &Services) -> String {
    format!("{}sys--holds", svc.s3.bucket_prefix())
}

/// Where a key's held copy lives in [`holds_bucket`].
pub fn held_key(backup: &str, key: &str) -> String {
    format!("{backup}/{}", hex::encode(Sha256::digest(key.as_bytes())))
}

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("a backup of this tenant is copying this object; try again in a moment")]
    Busy,
    #[error("backup hold: {0}")]
    Redis(#[from] crate::upstream::redis::RedisError),
    #[error(transparent)]
    Store(#[from] S3Error),
}

impl crate::error::ClientError for HoldError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Upstream
    }
    fn client_message(&self) -> String {
        match self {
            HoldError::Busy => self.to_string(),
            _ => "a data service is unavailable; retry later".into(),
        }
    }
}

impl From<redis::RedisError> for HoldError {
    fn from(e: redis::RedisError) -> Self {
        HoldError::Redis(e.into())
    }
}

/// Claim `key`: `Ok(None)` when no hold is set; otherwise the backup id and
/// whether the caller must copy (`Mine`), wait, or nothing (settled).
async fn claim(svc: &Services, tenant: TenantId, key: &str) -> Result<Option<(String, Claim)>, HoldError> {
    let mut c = svc.redis.conn().await?;
    let (state, backup): (String, String) = redis::Script::new(CLAIM)
        .key(hold_key(svc, tenant))
        .key(claims_key(svc, tenant))
        .arg(key)
        .arg(u64::try_from(STALE_CLAIM.as_millis()).unwrap_or(u64::MAX))
        .invoke_async(&mut c)
        .await?;
    Ok(match state.as_str() {
        "none" => None,
        "mine" => Some((backup, Claim::Mine)),
        "wait" => Some((backup, Claim::Wait)),
        other => Some((backup, Claim::Settled(Settled::parse(other).unwrap_or(Settled::Held)))),
    })
}

enum Claim {
    Mine,
    Wait,
    Settled(Settled),
}

async fn settle(svc: &Services, tenant: TenantId, key: &str, s: Settled) -> Result<(), HoldError> {
    let mut c = svc.redis.conn().await?;
    redis::cmd("HSET").arg(claims_key(svc, tenant)).arg(key).arg(s.as_str()).query_async::<()>(&mut c).await?;
    Ok(())
}

/// Server-side copy of the live object into the hold area; `Absent` when
/// it does not exist.
async fn copy_to_hold(svc: &Services, bucket: &str, backup: &str, key: &str) -> Result<Settled, HoldError> {
    let out = svc
        .s3
        .client()
        .copy_object()
        .bucket(holds_bucket(svc))
        .key(held_key(backup, key))
        .copy_source(format!("{bucket}/{}", encode_copy_source(key)))
        .metadata_directive(MetadataDirective::Copy)
        .send()
        .await;
    match out {
        Ok(_) => Ok(Settled::Held),
        Err(e) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e).map(str::to_owned);
            if status == Some(404) || matches!(code.as_deref(), Some("NoSuchKey")) {
                Ok(Settled::Absent)
            } else {
                Err(S3Error::Op { op: "copy object to the backup hold", code, message: e.to_string() }.into())
            }
        }
    }
}

/// Call before changing or deleting `key` in the tenant's bucket: while a
/// backup of the tenant runs, the object as it was is kept for it first.
/// One Redis round trip when no backup runs.
///
/// When Redis cannot be reached the write goes ahead (object writes do not
/// depend on Redis otherwise); a backup running then fails at its own next
/// claim or heartbeat, unless Redis comes back first — the one case where
/// an object written during a backup may be in it in its new version.
pub async fn before_write(svc: &Services, tenant: TenantId, bucket: &str, key: &str) -> Result<(), HoldError> {
    let started = std::time::Instant::now();
    loop {
        let claimed = match claim(svc, tenant, key).await {
            Ok(c) => c,
            Err(HoldError::Redis(e)) => {
                tracing::warn!(error = %e, "backup hold unreachable; object write goes ahead");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match claimed {
            None | Some((_, Claim::Settled(_))) => return Ok(()),
            Some((backup, Claim::Mine)) => {
                let s = copy_to_hold(svc, bucket, &backup, key).await?;
                return settle(svc, tenant, key, s).await;
            }
            Some((_, Claim::Wait)) => {
                if started.elapsed() > WAIT_LIMIT {
                    return Err(HoldError::Busy);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// The backup's side: claim `key` and settle it. `unchanged` says whether
/// the listed object matches the previous backup (then nothing is copied).
/// Returns how the key is settled for this backup.
pub async fn take(
    svc: &Services,
    tenant: TenantId,
    bucket: &str,
    key: &str,
    unchanged: bool,
) -> Result<Settled, HoldError> {
    let started = std::time::Instant::now();
    loop {
        match claim(svc, tenant, key).await? {
            None => return Err(HoldError::Busy),
            Some((_, Claim::Settled(s))) => return Ok(s),
            Some((backup, Claim::Mine)) => {
                let s = if unchanged { Settled::Kept } else { copy_to_hold(svc, bucket, &backup, key).await? };
                settle(svc, tenant, key, s).await?;
                return Ok(s);
            }
            Some((_, Claim::Wait)) => {
                if started.elapsed() > WAIT_LIMIT + STALE_CLAIM {
                    return Err(HoldError::Busy);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Set the tenant's hold for `backup`; fails if another backup holds it.
pub async fn begin(svc: &Services, tenant: TenantId, backup: &str) -> Result<bool, HoldError> {
    let mut c = svc.redis.conn().await?;
    let ttl = u64::try_from(HOLD_TTL.as_millis()).unwrap_or(60_000);
    let _: () = redis::cmd("DEL").arg(claims_key(svc, tenant)).query_async(&mut c).await?;
    let set: Option<String> = redis::cmd("SET")
        .arg(hold_key(svc, tenant))
        .arg(backup)
        .arg("NX")
        .arg("PX")
        .arg(ttl)
        .query_async(&mut c)
        .await?;
    Ok(set.is_some())
}

/// Keep the hold alive; `false` when it is no longer this backup's.
pub async fn refresh(svc: &Services, tenant: TenantId, backup: &str) -> Result<bool, HoldError> {
    let mut c = svc.redis.conn().await?;
    let ttl = u64::try_from((HOLD_TTL * 2).as_millis()).unwrap_or(120_000);
    let n: i64 = redis::Script::new(REFRESH)
        .key(hold_key(svc, tenant))
        .key(claims_key(svc, tenant))
        .arg(backup)
        .arg(ttl)
        .invoke_async(&mut c)
        .await?;
    Ok(n == 1)
}

/// Keys writers settled as `held` (they may be gone from the bucket now).
pub async fn held_keys(svc: &Services, tenant: TenantId) -> Result<Vec<String>, HoldError> {
    let mut c = svc.redis.conn().await?;
    let all: Vec<(String, String)> = redis::cmd("HGETALL").arg(claims_key(svc, tenant)).query_async(&mut c).await?;
    Ok(all.into_iter().filter(|(_, v)| v == "held").map(|(k, _)| k).collect())
}

/// End the hold (only if it is still this backup's) and forget the claims.
pub async fn end(svc: &Services, tenant: TenantId, backup: &str) -> Result<(), HoldError> {
    let mut c = svc.redis.conn().await?;
    let cur: Option<String> = redis::cmd("GET").arg(hold_key(svc, tenant)).query_async(&mut c).await?;
    if cur.as_deref() == Some(backup) {
        let _: () =
            redis::cmd("DEL").arg(hold_key(svc, tenant)).arg(claims_key(svc, tenant)).query_async(&mut c).await?;
    }
    Ok(())
}

/// Make sure the holds bucket exists (an existing one is fine).
pub async fn ensure_bucket(svc: &Services) -> Result<(), S3Error> {
    match svc.s3.create_bucket(&holds_bucket(svc)).await {
        Ok(()) | Err(S3Error::BucketExists(_)) => Ok(()),
        Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Percent-encode a key for `x-amz-copy-source` (everything but unreserved
/// characters and `/`). Written here because the SDK takes the header as
/// given and `url` has no path-segment encoder for it.
fn encode_copy_source(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_encoding() {
        assert_eq!(encode_copy_source("a/b c+é?"), "a/b%20c%2B%C3%A9%3F");
        assert_eq!(held_key("b1", "k").len(), 3 + 64);
    }
}
