//! How many gateway instances are live, from heartbeats in Redis: every
//! instance adds itself to one sorted set every [`BEAT`] with Redis's own
//! clock as the score, drops members older than [`EXPIRY`], and reads the
//! count back in the same script. The local fallback of the rate limiter
//! divides each limit by this count, so N live instances deciding locally
//! admit about what one shared bucket would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::upstream::redis::RedisStore;

/// Heartbeat period.
pub const BEAT: Duration = Duration::from_secs(2);
/// A member not heard from for this long is no longer counted.
pub const EXPIRY: Duration = Duration::from_secs(10);

/// KEYS[1] = the set; ARGV[1] = this instance, ARGV[2] = expiry in ms.
/// Returns the number of live members.
const BEAT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
";

/// This instance's view of how many instances are live.
#[derive(Clone)]
pub struct Instances {
    id: String,
    live: Arc<AtomicU32>,
}

impl Instances {
    /// Start from the configured count until the first heartbeat answers.
    pub fn new(assumed: u32) -> Self {
        Self { id: uuid::Uuid::new_v4().to_string(), live: Arc::new(AtomicU32::new(assumed.max(1))) }
    }

    /// Live instances (at least 1).
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed).max(1)
    }

    /// One heartbeat: register this instance and learn the live count.
    pub async fn beat(&self, redis: &RedisStore) -> Result<u32, crate::upstream::redis::RedisError> {
        let mut conn = redis.conn().await?;
        let n: u32 = redis::Script::new(BEAT_SCRIPT)
            .key(key(redis))
            .arg(&self.id)
            .arg(EXPIRY.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let before = self.live.swap(n.max(1), Ordering::Relaxed);
        if before != n.max(1) {
            tracing::info!(live = n, "rate limiter: live gateway instances changed");
        }
        Ok(n)
    }

    /// Beat every [`BEAT`] until shutdown, then leave the set.
    pub async fn run(self, redis: RedisStore, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // While Redis is away the last count stands.
                    if let Err(e) = self.beat(&redis).await {
                        tracing::debug!(error = %e, "rate limiter heartbeat");
                    }
                }
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        if let Ok(mut conn) = redis.conn().await {
            let _: Result<i64, _> = redis::cmd("ZREM").arg(key(&redis)).arg(&self.id).query_async(&mut conn).await;
        }
    }
}

fn key(redis: &RedisStore) -> String {
    redis.gateway_key("instances")
}
