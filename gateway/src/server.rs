//! Running the gateway: apply migrations, bind the listeners, serve until a
//! shutdown signal, then drain in-flight requests (bounded by
//! `server.shutdown_grace_ms`).

use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::migrate::{self, MigrationSet, RunAs};
use crate::services::Services;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("bind {what} listener on {addr}: {source}")]
    Bind { what: &'static str, addr: String, source: std::io::Error },
    #[error("control-plane migrations: {0}")]
    Migrate(#[from] migrate::MigrateError),
    #[error("control plane: {0}")]
    Control(#[from] crate::control::ControlError),
    #[error("serve: {0}")]
    Io(#[from] std::io::Error),
    #[error("Postgres door TLS: {0}")]
    Tls(#[from] crate::frontend::pg::tls::TlsError),
}

/// A gateway running in this process.
pub struct Running {
    pub http_addr: SocketAddr,
    /// Where the Postgres-wire door listens.
    pub pg_addr: SocketAddr,
    /// Where `/metrics` is served without a token (`server.metrics_addr`), if set.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the S3 door listens (`server.s3_addr`), if it is on.
    pub s3_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Stop accepting, drain, and wait for the server to end.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.shutdown.send(true);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Io(std::io::Error::other(e))),
        }
    }
}

/// Apply (or, with `auto_migrate = false`, verify) control-plane migrations.
pub async fn prepare_control_plane(svc: &Services) -> Result<(), ServeError> {
    let mut c = svc.control.client().await?;
    if svc.config.control.auto_migrate {
        let applied = migrate::up(&mut c, MigrationSet::Control, &RunAs::default()).await?;
        for m in applied {
            tracing::info!(version = m.version, name = %m.name, "applied control-plane migration");
        }
    } else {
        migrate::verify_applied(&mut c, MigrationSet::Control).await?;
    }
    Ok(())
}

/// Bind and start serving in the background.
pub async fn start(svc: Services, http_addr: &str) -> Result<Running, ServeError> {
    // Install the recorder before anything records.
    crate::telemetry::metrics_handle();
    prepare_control_plane(&svc).await?;
    let listener = TcpListener::bind(http_addr).await.map_err(|source| ServeError::Bind {
        what: "HTTP",
        addr: http_addr.into(),
        source,
    })?;
    let addr = listener.local_addr()?;
    let pg_bind = svc.config.server.pg_addr.clone();
    let pg_listener = TcpListener::bind(&pg_bind).await.map_err(|source| ServeError::Bind {
        what: "Postgres",
        addr: pg_bind.clone(),
        source,
    })?;
    let pg_addr = pg_listener.local_addr()?;
    let metrics_listener = match svc.config.server.metrics_addr.as_str() {
        "" => None,
        bind => Some(TcpListener::bind(bind).await.map_err(|source| ServeError::Bind {
            what: "metrics",
            addr: bind.into(),
            source,
        })?),
    };
    let metrics_addr = metrics_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let s3_listener = match svc.config.server.s3_addr.as_str() {
        "" => None,
        bind => Some(TcpListener::bind(bind).await.map_err(|source| ServeError::Bind {
            what: "S3",
            addr: bind.into(),
            source,
        })?),
    };
    let s3_addr = s3_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let grace = Duration::from_millis(svc.config.server.shutdown_grace_ms);
    let (tx, mut rx) = watch::channel(false);
    if let Err(e) = svc.plugins.artifacts().ensure_bucket().await {
        tracing::warn!(error = %e, "create the plugin artifact bucket; retrying on first upload");
    }
    tokio::spawn(crate::plugins::reload::listen(
        svc.plugins.clone(),
        svc.config.control.database_url.clone(),
        rx.clone(),
    ));
    crate::memory::tune_allocator();
    tokio::spawn(crate::memory::trimmer(rx.clone()));
    tokio::spawn(crate::retention::scheduler(svc.clone(), rx.clone()));
    tokio::spawn(svc.replicas.clone().watch(svc.pg_admin.clone(), rx.clone()));
    tokio::spawn(svc.usage.clone().run(svc.clone(), rx.clone()));
    tokio::spawn(svc.fences.clone().run(svc.clone(), rx.clone()));
    tokio::spawn(crate::backup::schedule::scheduler(svc.clone(), rx.clone()));
    tokio::spawn(svc.ratelimit.instances().clone().run(svc.ratelimit.redis().clone(), rx.clone()));
    if svc.config.usage.meter {
        tokio::spawn(crate::usage::meter::run(svc.clone(), svc.usage.clone(), rx.clone()));
    }
    {
        let (plugins, mut rx) = (svc.plugins.clone(), rx.clone());
        tokio::spawn(async move {
            let _ = rx.wait_for(|v| *v).await;
            plugins.stop_compiles();
        });
    }
    let door = std::sync::Arc::new(crate::frontend::pg::PgDoor::new(svc.clone())?);
    let pg_task = tokio::spawn(crate::frontend::pg::serve(pg_listener, door, rx.clone(), grace));
    if let Some(listener) = metrics_listener {
        let mut stop = rx.clone();
        let metrics =
            axum::serve(listener, crate::frontend::http::health::metrics_router()).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|v| *v).await;
            });
        tokio::spawn(async move {
            if let Err(e) = metrics.await {
                tracing::error!(error = %e, "serve /metrics on server.metrics_addr");
            }
        });
    }
    if let Some(listener) = s3_listener {
        tokio::spawn(crate::frontend::s3::serve(listener, svc.clone(), rx.clone()));
    }
    // Uploads may have been started on any instance's S3 door.
    tokio::spawn(crate::objects::multipart::sweeper(svc.clone(), rx.clone()));
    let app = crate::frontend::http::router(svc);
    let task = tokio::spawn(async move {
        let mut pg_done = PgDone(Some(pg_task));
        let mut drain_rx = rx.clone();
        let server = axum::serve(
            // Small responses leave at once, never held back by Nagle.
            listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            }),
            app,
        )
        .with_graceful_shutdown(async move {
            let _ = rx.wait_for(|v| *v).await;
            tracing::info!("shutting down: draining in-flight requests");
        });
        let server = async move { server.await.map_err(ServeError::Io) };
        tokio::pin!(server);
        let stopping = drain_rx.clone();
        let r = tokio::select! {
            r = &mut server => r,
            _ = async {
                let _ = drain_rx.wait_for(|v| *v).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "drain deadline passed; closing remaining connections");
                Ok(())
            }
        };
        // The Postgres door drains within the same grace period.
        if *stopping.borrow()
            && let Some(t) = pg_done.0.take()
        {
            let _ = t.await;
        }
        r
    });
    tracing::info!(%addr, "HTTP door listening");
    tracing::info!(addr = %pg_addr, "Postgres door listening");
    if let Some(addr) = metrics_addr {
        tracing::info!(%addr, "metrics listening (no token)");
    }
    if let Some(addr) = s3_addr {
        tracing::info!(%addr, "S3 door listening");
    }
    Ok(Running { http_addr: addr, pg_addr, metrics_addr, s3_addr, shutdown: tx, task })
}

/// Aborts the Postgres door's accept loop if the HTTP server ends first; on
/// a normal shutdown the loop has already ended by itself.
struct PgDone(Option<tokio::task::JoinHandle<()>>);

impl Drop for PgDone {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// Serve until SIGTERM or Ctrl-C.
pub async fn run(svc: Services, http_addr: &str) -> Result<(), ServeError> {
    let running = start(svc, http_addr).await?;
    shutdown_signal().await;
    running.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
