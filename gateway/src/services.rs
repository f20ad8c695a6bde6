//! The handles every door and command shares: config, control plane, and the
//! three data services. Cheap to clone; built once per process.

use std::sync::Arc;

use crate::backup::fence::Fences;
use crate::backup::stage::FenceStage;
use crate::backup::{BackupError, Backups};
use crate::cache::SemCache;
use crate::config::Config;
use crate::control::{ControlError, ControlPlane};
use crate::pipeline::Pipeline;
use crate::plugins::stage::PolicyStage;
use crate::plugins::{PluginError, Plugins};
use crate::ratelimit::RateLimiter;
use crate::ratelimit::stage::RateLimitStage;
use crate::sql::SqlParser;
use crate::sql::stage::SqlRulesStage;
use crate::upstream::budget::Budgets;
use crate::upstream::postgres::{PgAdmin, PgAdminError};
use crate::upstream::redis::{RedisError, RedisStore};
use crate::upstream::replicas::Replicas;
use crate::upstream::s3::ObjectStore;
use crate::upstream::tenant_pg::TenantPools;
use crate::usage::book::UsageBook;
use crate::usage::stage::StorageQuotaStage;

#[derive(Clone)]
pub struct Services {
    pub config: Arc<Config>,
    pub control: ControlPlane,
    pub pg_admin: PgAdmin,
    pub redis: RedisStore,
    pub s3: ObjectStore,
    /// Stages every data request passes (SQL rules, rate limits, policy).
    pub pipeline: Pipeline,
    /// Postgres's grammar with a per-tenant cache: every SQL text of both doors.
    pub sql: SqlParser,
    /// Per-tenant pools onto tenant databases (per node).
    pub tenant_pg: TenantPools,
    /// Read replicas and where each transaction goes.
    pub replicas: Arc<Replicas>,
    /// Per-tenant connection budgets, shared by the HTTP and Postgres doors.
    pub budgets: Budgets,
    /// Rate limits (also the first stage of `pipeline`).
    pub ratelimit: RateLimiter,
    /// The semantic cache.
    pub semcache: SemCache,
    /// The WebAssembly plugin platform (policies, retention rules, rerankers).
    pub plugins: Plugins,
    /// Which tenants' databases are full (storage quotas, both doors).
    pub usage: UsageBook,
    /// Tenants fenced by a restore in progress (both doors).
    pub fences: Fences,
    /// Backups, when a backup target is configured.
    pub backups: Option<Arc<Backups>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Pg(#[from] PgAdminError),
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Plugins(#[from] PluginError),
    #[error(transparent)]
    Backup(#[from] BackupError),
}

impl Services {
    /// Build every client. Nothing connects yet: the gateway starts while a
    /// dependency is down and `/readyz` names it.
    pub fn new(config: Config) -> Result<Self, ServicesError> {
        let redis = RedisStore::new(&config.redis)?;
        let ratelimit = RateLimiter::new(redis.clone(), config.ratelimit.clone());
        let control = ControlPlane::new(&config.control)?;
        let s3 = ObjectStore::new(&config.s3);
        let plugins = Plugins::new(&config, control.clone(), s3.clone())?;
        let usage = UsageBook::default();
        let fences = Fences::default();
        let backups = Backups::from_config(&config)?.map(Arc::new);
        Ok(Self {
            pg_admin: PgAdmin::new(&config.postgres)?,
            replicas: Arc::new(Replicas::new(&config.postgres)?),
            semcache: SemCache::new(redis.clone(), config.cache.clone()),
            redis,
            // auth → tenant → parse → rules → storage quota → rate limit → policy → route (design.md).
            pipeline: Pipeline::default()
                .with_stage(Arc::new(FenceStage::new(fences.clone())))
                .with_stage(Arc::new(SqlRulesStage::new(&config.postgres)))
                .with_stage(Arc::new(StorageQuotaStage::new(usage.clone())))
                .with_stage(Arc::new(RateLimitStage::new(ratelimit.clone())))
                .with_stage(Arc::new(PolicyStage::new(plugins.clone()))),
            sql: SqlParser::new(),
            ratelimit,
            tenant_pg: TenantPools::default(),
            budgets: Budgets::default(),
            control,
            s3,
            plugins,
            usage,
            fences,
            backups,
            config: Arc::new(config),
        })
    }
}
