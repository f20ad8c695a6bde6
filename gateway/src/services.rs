//! The handles every door and command shares: config, control plane, and the
//! three data services. Cheap to clone; built once per process.

use std::sync::Arc;

use crate::config::Config;
use crate::control::{ControlError, ControlPlane};
use crate::pipeline::Pipeline;
use crate::upstream::postgres::{PgAdmin, PgAdminError};
use crate::upstream::redis::{RedisError, RedisStore};
use crate::upstream::s3::ObjectStore;
use crate::upstream::tenant_pg::TenantPools;

#[derive(Clone)]
pub struct Services {
    pub config: Arc<Config>,
    pub control: ControlPlane,
    pub pg_admin: PgAdmin,
    pub redis: RedisStore,
    pub s3: ObjectStore,
    /// Stages every data request passes (rate limits, policy).
    pub pipeline: Pipeline,
    /// Per-tenant pools onto tenant databases.
    pub tenant_pg: TenantPools,
}

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Pg(#[from] PgAdminError),
    #[error(transparent)]
    Redis(#[from] RedisError),
}

impl Services {
    /// Build every client. Nothing connects yet: the gateway starts while a
    /// dependency is down and `/readyz` names it.
    pub fn new(config: Config) -> Result<Self, ServicesError> {
        Ok(Self {
            control: ControlPlane::new(&config.control)?,
            pg_admin: PgAdmin::new(&config.postgres)?,
            redis: RedisStore::new(&config.redis)?,
            s3: ObjectStore::new(&config.s3),
            pipeline: Pipeline::default(),
            tenant_pg: TenantPools::default(),
            config: Arc::new(config),
        })
    }
}
