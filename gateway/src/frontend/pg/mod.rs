//! The Postgres-wire door (default port 6432): protocol 3.0 for any ordinary
//! driver, pooled onto each tenant's own database.
//!
//! Phases of a connection, each in its own module:
//! 1. **startup** (here): SSLRequest → `S` and a rustls handshake when
//!    `[server.tls]` is set, else `N` ([`tls`]); GSSENCRequest → `N`;
//!    CancelRequest → forwarded ([`cancel`]); StartupMessage → login. The
//!    whole startup and authentication must finish within
//!    [`STARTUP_TIMEOUT`].
//! 2. **authentication** ([`auth`]): SCRAM-SHA-256 with the tenant name as
//!    user and an API key as password, then the database check (only the
//!    tenant's own database) and the `pg_max_connections` quota.
//! 3. **session** ([`session`]): transaction pooling, prepared statements
//!    that survive it, session state ([`state`]), COPY passthrough, and the
//!    shared pipeline (`admit`) on every Query and Parse; a session ends
//!    when its key is revoked ([`keywatch`]).
//!
//! Client bytes are decoded by pure functions in [`messages`] (fuzzed); every
//! error reaches the client through one builder, [`messages::error::PgError`].

pub mod alarm;
pub mod auth;
pub mod cancel;
pub mod client;
pub mod keywatch;
pub mod messages;
pub mod routing;
pub mod session;
pub mod state;
pub mod statements;
pub mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::config::PgPoolMode;
use crate::control::provision::legacy_db_name;
use crate::ids::TenantId;
use crate::services::Services;
use crate::upstream::pg_wire::pool::WirePools;
use client::ClientConn;
use messages::error::PgError;
use messages::startup::{StartupPacket, decode_startup, startup_len};

/// Startup and authentication together must finish within this time.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Per-instance state of the door.
pub struct PgDoor {
    pub svc: Services,
    pub pools: WirePools,
    pub cancels: Arc<cancel::CancelRegistry>,
    /// The keys of open sessions, checked for revocation.
    pub keys: Arc<keywatch::KeyWatch>,
    tls: Option<TlsAcceptor>,
    conns: Mutex<HashMap<TenantId, u32>>,
    pub session_mode: bool,
    pub pool_wait: Duration,
    /// Bytes all clients together may hold in partly received large
    /// messages (`server.pg_read_budget_bytes`, see [`client`]).
    pub read_budget: Arc<tokio::sync::Semaphore>,
}

/// Counts a tenant's connections on this instance while alive.
struct ConnSlot<'a> {
    door: &'a PgDoor,
    tenant: TenantId,
}

impl Drop for ConnSlot<'_> {
    fn drop(&mut self) {
        let mut m = self.door.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.tenant);
            }
        }
    }
}

impl PgDoor {
    pub fn new(svc: Services) -> Result<Self, tls::TlsError> {
        let tls = svc.config.server.tls.as_ref().map(tls::acceptor).transpose()?;
        Ok(Self {
            pools: WirePools::default(),
            cancels: Arc::default(),
            keys: Arc::default(),
            tls,
            conns: Mutex::default(),
            session_mode: svc.config.server.pg_pool_mode == PgPoolMode::Session,
            pool_wait: Duration::from_millis(svc.config.server.pg_pool_timeout_ms),
            read_budget: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(svc.config.server.pg_read_budget_bytes)
                    .unwrap_or(usize::MAX)
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            svc,
        })
    }

    fn take_slot(&self, tenant: TenantId, max: i32) -> Option<ConnSlot<'_>> {
        let mut m = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(tenant).or_insert(0);
        if i64::from(*n) >= i64::from(max.max(0)) {
            return None;
        }
        *n += 1;
        Some(ConnSlot { door: self, tenant })
    }
}

/// Accept connections until shutdown, then wait (up to `grace`) for sessions
/// to finish their current transaction.
pub async fn serve(listener: TcpListener, door: Arc<PgDoor>, mut shutdown: watch::Receiver<bool>, grace: Duration) {
    let tracker = TaskTracker::new();
    tokio::spawn(door.keys.clone().run(door.svc.clone(), shutdown.clone()));
    let sweeper = tokio::spawn(door.keys.clone().run_sweeper());
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => Some(r),
            _ = shutdown.wait_for(|v| *v) => None,
        };
        match accepted {
            None => break,
            Some(Ok((stream, _))) => {
                let door = door.clone();
                tracker.spawn(async move { handle(door, stream).await });
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "accept Postgres connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    door.keys.ring_all();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("Postgres door: drain deadline passed; closing remaining sessions");
    }
    sweeper.abort();
}

enum Startup<S> {
    Upgrade(ClientConn<S>),
    Login(ClientConn<S>, Vec<(String, String)>),
    Done,
}

async fn handle(door: Arc<PgDoor>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    metrics::counter!("sluice_pg_connections_total").increment(1);
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let client = ClientConn::new(stream, door.read_budget.clone());
    match startup(&door, client, door.tls.is_some(), deadline).await {
        // Boxed: a TLS session's future is much larger than a plain one's,
        // and every plain idle client would otherwise carry that size.
        Startup::Upgrade(client) => Box::pin(tls_session(door, client, deadline)).await,
        Startup::Login(client, params) => login(door, client, params, deadline).await,
        Startup::Done => {}
    }
}

/// The TLS handshake, then startup and the session over TLS.
async fn tls_session(door: Arc<PgDoor>, client: ClientConn<TcpStream>, deadline: tokio::time::Instant) {
    let Some(acceptor) = door.tls.clone() else { return };
    let budget = door.read_budget.clone();
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(client.stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake");
            return;
        }
        Err(_) => return,
    };
    if let Startup::Login(client, params) = startup(&door, ClientConn::new(tls, budget), false, deadline).await {
        login(door, client, params, deadline).await;
    }
}

async fn send_fatal<S: AsyncRead + AsyncWrite + Unpin>(client: &mut ClientConn<S>, e: &PgError) {
    e.encode(&mut client.wbuf);
    if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), client.flush()).await {
        client.linger().await;
    }
}

/// Read startup packets until a StartupMessage (answering SSL and GSS
/// requests on the way) or a CancelRequest.
async fn startup<S: AsyncRead + AsyncWrite + Unpin>(
    door: &PgDoor,
    mut client: ClientConn<S>,
    offer_tls: bool,
    deadline: tokio::time::Instant,
) -> Startup<S> {
    for _ in 0..3 {
        let packet = tokio::time::timeout_at(deadline, async {
            // Like Postgres: a bad length word or a client that leaves mid-packet
            // is only logged (there may be nobody to answer, and a client that
            // sent something else than a startup packet, e.g. Terminate before
            // startup, must not be told a confusing error).
            let len = startup_len_of(&mut client).await.map_err(|e| {
                tracing::debug!(error = %e.message, "invalid startup packet");
                None
            })?;
            let body = client.read_exact(len).await.map_err(|e| {
                tracing::debug!(error = %e, "incomplete startup packet");
                None
            })?;
            decode_startup(&body).map_err(|e| Some(PgError::protocol(e.to_string())))
        })
        .await;
        let packet = match packet {
            Ok(Ok(p)) => p,
            Ok(Err(None)) => return Startup::Done,
            Ok(Err(Some(e))) => {
                send_fatal(&mut client, &e).await;
                return Startup::Done;
            }
            Err(_) => {
                send_fatal(&mut client, &PgError::protocol("timeout waiting for the startup packet")).await;
                return Startup::Done;
            }
        };
        match packet {
            StartupPacket::SslRequest if offer_tls => {
                client.wbuf.put_u8(b'S');
                if client.flush().await.is_err() || client.buffered() > 0 {
                    // Bytes after SSLRequest before the handshake: a
                    // man-in-the-middle attempt (CVE-2021-23222); refuse.
                    return Startup::Done;
                }
                return Startup::Upgrade(client);
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                client.wbuf.put_u8(b'N');
                if client.flush().await.is_err() {
                    return Startup::Done;
                }
            }
            StartupPacket::Cancel { pid, secret } => {
                if let Some(t) = door.cancels.lookup(pid, secret)
                    && let Err(e) = crate::upstream::pg_wire::cancel(&t.target, t.pid, t.secret).await
                {
                    tracing::warn!(error = %e, "forward cancel request");
                }
                return Startup::Done;
            }
            StartupPacket::Startup { params } => return Startup::Login(client, params),
        }
    }
    send_fatal(&mut client, &PgError::protocol("too many startup negotiation packets")).await;
    Startup::Done
}

async fn startup_len_of<S: AsyncRead + AsyncWrite + Unpin>(client: &mut ClientConn<S>) -> Result<usize, PgError> {
    let hdr = client.read_exact(4).await.map_err(|e| PgError::protocol(e.to_string()))?;
    startup_len([hdr[0], hdr[1], hdr[2], hdr[3]]).map_err(|e| PgError::protocol(e.to_string()))
}

async fn login<S: AsyncRead + AsyncWrite + Unpin + Send>(
    door: Arc<PgDoor>,
    mut client: ClientConn<S>,
    params: Vec<(String, String)>,
    deadline: tokio::time::Instant,
) {
    let Some(user) = StartupPacket::param(&params, "user").map(str::to_owned) else {
        send_fatal(&mut client, &PgError::fatal("28000", "no PostgreSQL user name specified in startup packet")).await;
        return;
    };
    let database = StartupPacket::param(&params, "database").unwrap_or(&user).to_owned();
    let principal = match tokio::time::timeout_at(deadline, auth::authenticate(&mut client, &door.svc, &user)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            send_fatal(&mut client, &e).await;
            return;
        }
        Err(_) => {
            send_fatal(&mut client, &PgError::protocol("authentication timed out")).await;
            return;
        }
    };
    // The tenant's name is its database's name to clients; the real (opaque)
    // name and the name tenants created earlier had are accepted too.
    let legacy = legacy_db_name(&door.svc, &principal.tenant);
    if database != principal.tenant.as_str() && database != principal.db.name && database != legacy {
        let e = PgError::fatal("3D000", format!("database \"{database}\" does not exist"))
            .with_hint(format!("tenant \"{0}\" connects to database \"{0}\"", principal.tenant));
        send_fatal(&mut client, &e).await;
        return;
    }
    let Some(_slot) = door.take_slot(principal.tenant_id, principal.quotas.pg_max_connections) else {
        let e = PgError::fatal("53300", format!("too many connections for tenant \"{}\"", principal.tenant))
            .with_hint("the tenant's pg_max_connections quota is reached");
        send_fatal(&mut client, &e).await;
        return;
    };
    let tenant = principal.tenant.clone();
    let mut session = match tokio::time::timeout_at(
        deadline,
        session::Session::start(door.clone(), principal, client, &params),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err((mut client, e))) => {
            send_fatal(&mut client, &e).await;
            return;
        }
        Err(_) => return,
    };
    tracing::debug!(%tenant, "pg session started");
    let result = session.run().await;
    if let Err(e) = result {
        session.send_fatal(&e).await;
    }
    session.finish().await;
}
