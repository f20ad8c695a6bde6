//! One authenticated client session: the transaction-pooling state machine.
//!
//! The session holds no upstream connection while idle. The first message
//! that needs one takes a connection from the tenant's pool (after syncing
//! session state, see [`super::state`]); the connection goes back when the
//! upstream reports ReadyForQuery with status `I` and nothing else is in
//! flight (unless the session is pinned, or the door runs in session mode).
//!
//! Requests and responses are matched with a FIFO of [`Pending`] entries, one
//! per forwarded message that expects an answer. That lets the door answer
//! some messages itself, in order (ParseComplete for a statement the
//! connection already has, CloseComplete for a statement close, refusals from
//! the pipeline), and swallow the answers to messages it injected (the Parse
//! that re-prepares a named statement on a connection that lacks it).
//!
//! Named prepared statements are renamed to `sl_<hash of query and parameter
//! types>`; each upstream connection remembers the names it holds. Client
//! `Close` of a statement is answered locally; the upstream keeps it cached.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::PgDoor;
use super::cancel::{CancelTarget, Registration};
use super::client::{ClientConn, ClientIoError};
use super::messages::error::PgError;
use super::messages::extended::{Bind, Parse, Target, encode_parse};
use super::messages::{FrontendMessage, MAX_MESSAGE_LEN, backend, decode, put_frame};
use super::state::{self, Effect};
use crate::pipeline::auth::Principal;
use crate::pipeline::{Action, Door, Operation};
use crate::sql::rules;
use crate::upstream::pg_wire::pool::{PooledConn, WirePool};
use crate::upstream::pg_wire::{WireError, parse_error_fields};

/// How long cleanup of a connection (ROLLBACK, DISCARD ALL) may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the door expects upstream to answer, in order.
#[derive(Debug)]
enum Pending {
    Query {
        effect: Effect,
        failed: bool,
    },
    /// `upstream`: the statement name this Parse creates on the connection;
    /// `client`: the client's name for it; `swallow`: injected by the door.
    Parse {
        swallow: bool,
        upstream: Option<Arc<[u8]>>,
        client: Option<Box<[u8]>>,
    },
    Bind,
    DescribeStatement,
    DescribePortal,
    /// `copy_ends`: CopyDone/CopyFail messages forwarded before this one (see
    /// [`Session::on_copy_in`]).
    Execute {
        copy_ends: u64,
        track: Option<Vec<String>>,
    },
    Close,
    Sync {
        copy_ends: u64,
    },
    /// Bytes the door answers itself when this point of the stream is reached.
    Local(Bytes),
}

/// A client's named prepared statement.
#[derive(Debug)]
struct Statement {
    upstream: Arc<[u8]>,
    query: Bytes,
    param_types: Bytes,
    /// Session state to record when an execution of it completes.
    track: Option<Vec<String>>,
}

impl Statement {
    fn new(upstream: Arc<[u8]>, p: &Parse<'_>, effect: &Effect) -> Arc<Self> {
        Arc::new(Statement {
            upstream,
            query: Bytes::copy_from_slice(p.query),
            param_types: Bytes::copy_from_slice(p.param_types),
            track: tracked(effect),
        })
    }
}

/// The statements to record for a tracked effect.
fn tracked(effect: &Effect) -> Option<Vec<String>> {
    match effect {
        Effect::Track(t) => Some(t.clone()),
        _ => None,
    }
}

/// Deterministic upstream name of a statement: the same query and parameter
/// types give the same name on every connection.
pub fn upstream_statement_name(query: &[u8], param_types: &[u8]) -> Arc<[u8]> {
    let mut h = Sha256::new();
    h.update(query);
    h.update([0]);
    h.update(param_types);
    let d = h.finalize();
    format!("sl_{}", hex::encode(&d[..12])).into_bytes().into()
}

pub struct Session<S> {
    door: Arc<PgDoor>,
    principal: Principal,
    client: ClientConn<S>,
    pool: WirePool,
    server: Option<PooledConn>,
    queue: VecDeque<Pending>,
    statements: HashMap<Box<[u8]>, Arc<Statement>>,
    /// The session state to replay (startup settings, then tracked SETs).
    sets: Vec<String>,
    /// Session state the unnamed statement records when executed.
    unnamed_track: Option<Vec<String>>,
    /// Portals bound from a statement with session state to record.
    portal_track: HashMap<Box<[u8]>, Vec<String>>,
    sets_hash: u64,
    pinned: bool,
    /// After an error in the extended protocol: discard until Sync.
    skipping: bool,
    /// Transaction status as last reported to the client.
    status: u8,
    /// CopyDone/CopyFail messages forwarded so far.
    copy_ends: u64,
    cancel: Registration,
}

enum Event {
    Server(std::io::Result<(u8, Bytes)>),
    Client(Result<Option<(u8, Bytes)>, ClientIoError>),
    Shutdown,
}

/// A ParameterStatus (`name\0value\0`) that would make the server read
/// statement text differently from the gateway's parser.
fn unsafe_report(body: &[u8]) -> Option<rules::Refusal> {
    let mut parts = body.split(|b| *b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    rules::unsafe_setting(name, value)
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Finish the login: apply the startup settings on an upstream connection
    /// (which also checks them), report parameters, BackendKeyData and
    /// ReadyForQuery.
    pub async fn start(
        door: Arc<PgDoor>,
        principal: Principal,
        client: ClientConn<S>,
        params: &[(String, String)],
    ) -> Result<Self, (ClientConn<S>, PgError)> {
        let settings = match state::startup_settings(params) {
            Ok(s) => s,
            Err(m) => return Err((client, PgError::fatal("42704", m))),
        };
        if let Some(r) = settings.iter().find_map(|(k, v)| rules::unsafe_setting(k, v)) {
            return Err((client, PgError::fatal("0A000", r.to_string())));
        }
        let pool = match door.pools.pool(&door.svc, &principal, door.pool_wait) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, tenant = %principal.tenant, "build upstream pool");
                return Err((client, PgError::fatal("08001", "could not open a connection to the tenant database")));
            }
        };
        let cancel = door.cancels.register();
        let mut s = Session {
            door,
            principal,
            client,
            pool,
            server: None,
            queue: VecDeque::new(),
            statements: HashMap::new(),
            sets: Vec::new(),
            unnamed_track: None,
            portal_track: HashMap::new(),
            sets_hash: 0,
            pinned: false,
            skipping: false,
            status: b'I',
            copy_ends: 0,
            cancel,
        };
        if let Err(e) = s.login(&settings).await {
            return Err((s.client, e));
        }
        Ok(s)
    }

    async fn login(&mut self, settings: &[(String, String)]) -> Result<(), PgError> {
        let mut conn = self.get_conn().await.map_err(|mut e| {
            e.severity = super::messages::error::Severity::Fatal;
            e
        })?;
        // Settings that differ from the upstream's defaults become the session state.
        let defaults: HashMap<String, String> =
            conn.params.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_ascii_lowercase())).collect();
        self.sets = settings
            .iter()
            .filter(|(k, v)| defaults.get(k) != Some(&v.to_ascii_lowercase()))
            .map(|(k, v)| state::setting_statement(k, v))
            .collect();
        self.sets_hash = state::state_hash(&self.sets);
        let mut reported: Vec<(String, String)> = conn.params.clone();
        if conn.dirty || conn.session_hash != self.sets_hash {
            match replay(&mut conn, &self.sets).await {
                Ok(changed) => {
                    for (k, v) in changed {
                        match reported.iter_mut().find(|(rk, _)| *rk == k) {
                            Some(slot) => slot.1 = v,
                            None => reported.push((k, v)),
                        }
                    }
                    conn.session_hash = self.sets_hash;
                    conn.dirty = false;
                }
                Err(WireError::Server { code, message }) => {
                    conn.dirty = true;
                    return Err(PgError::fatal(known_code(&code), message));
                }
                Err(e) => {
                    conn.broken = true;
                    tracing::warn!(error = %e, "apply startup settings upstream");
                    return Err(PgError::fatal("08006", "connection to the upstream database was lost"));
                }
            }
        }
        for (k, v) in &reported {
            backend::parameter_status(&mut self.client.wbuf, k, v);
        }
        backend::backend_key_data(&mut self.client.wbuf, self.cancel.pid, self.cancel.secret);
        backend::ready_for_query(&mut self.client.wbuf, b'I');
        if self.door.session_mode {
            self.pinned = true;
            self.attach(conn);
        }
        Ok(())
    }

    /// Take a connection from the pool (no state sync).
    async fn get_conn(&mut self) -> Result<PooledConn, PgError> {
        match self.pool.get().await {
            Ok(c) => Ok(c),
            Err(deadpool::managed::PoolError::Timeout(_)) => {
                Err(PgError::error("57P03", "no upstream connection became free in time; retry later"))
            }
            Err(e) => {
                tracing::warn!(error = %e, tenant = %self.principal.tenant, "open upstream connection");
                Err(PgError::error("08001", "could not open a connection to the tenant database"))
            }
        }
    }

    fn attach(&mut self, conn: PooledConn) {
        self.cancel.set(Some(CancelTarget {
            target: self.pool.manager().target.clone(),
            pid: conn.pid,
            secret: conn.secret,
        }));
        self.server = Some(conn);
    }

    fn release(&mut self) {
        self.cancel.set(None);
        self.server = None;
        self.status = b'I';
    }

    /// Make sure the session holds a connection with its state applied.
    /// On failure the error has been answered and the session is skipping
    /// (extended protocol) or the caller answers ReadyForQuery.
    async fn ensure_server(&mut self) -> Result<bool, PgError> {
        if self.server.is_some() {
            return Ok(true);
        }
        let mut conn = match self.get_conn().await {
            Ok(c) => c,
            Err(e) => {
                self.local_error(&e);
                return Ok(false);
            }
        };
        if conn.dirty || conn.session_hash != self.sets_hash {
            match replay(&mut conn, &self.sets).await {
                Ok(_) => {
                    conn.session_hash = self.sets_hash;
                    conn.dirty = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replay session state upstream");
                    conn.broken = true;
                    self.local_error(&PgError::upstream_lost());
                    return Ok(false);
                }
            }
        }
        self.attach(conn);
        Ok(true)
    }

    /// Answer `bytes` at the current point of the response stream.
    fn local(&mut self, bytes: Bytes) {
        if self.queue.is_empty() {
            self.client.wbuf.extend_from_slice(&bytes);
        } else {
            self.queue.push_back(Pending::Local(bytes));
        }
    }

    fn local_error(&mut self, e: &PgError) {
        let mut b = BytesMut::new();
        e.encode(&mut b);
        self.local(b.freeze());
    }

    fn local_ready(&mut self) {
        let mut b = BytesMut::new();
        backend::ready_for_query(&mut b, if self.server.is_some() { self.status } else { b'I' });
        self.local(b.freeze());
    }

    /// An ERROR in the extended protocol: answer it and skip until Sync.
    fn refuse_extended(&mut self, e: &PgError) {
        self.local_error(e);
        self.skipping = true;
    }

    /// Parse `sql` (Postgres's grammar, cached) and run the pipeline on its
    /// statements. Ok: the session effect of the statements.
    async fn understand(&self, sql: &str) -> Result<Effect, PgError> {
        let parsed = self.door.svc.sql.parse(self.principal.tenant_id, sql).await.map_err(|e| PgError::syntax(&e))?;
        let action = Action::Sql { text: sql, statements: &parsed.statements };
        let op = Operation { door: Door::Pg, principal: &self.principal, action };
        self.door.svc.pipeline.admit(&op).await.map_err(|e| PgError::from(&e))?;
        Ok(state::effect(&parsed.statements))
    }

    fn server(&mut self) -> Result<&mut PooledConn, PgError> {
        self.server.as_mut().ok_or_else(|| PgError::fatal("XX000", "internal error: no upstream connection"))
    }

    fn forward(&mut self, tag: u8, body: &[u8]) -> Result<(), PgError> {
        let s = self.server()?;
        put_frame(&mut s.wbuf, tag, |b| b.put_slice(body));
        Ok(())
    }

    fn note_effect(&mut self, effect: &Effect) -> Result<(), PgError> {
        match effect {
            Effect::Dirty => self.server()?.dirty = true,
            Effect::Pin => self.pinned = true,
            Effect::None | Effect::Track(_) => {}
        }
        Ok(())
    }

    /// Serve the session until the client leaves (Ok) or a FATAL error (Err,
    /// to be sent before closing).
    pub async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), PgError> {
        loop {
            let ev = if let Some(server) = self.server.as_mut() {
                if !self.client.has_frame() {
                    server.flush().await.ok();
                }
                if !server.has_frame() {
                    self.client.flush().await.map_err(|e| PgError::protocol(e.to_string()))?;
                }
                tokio::select! {
                    r = server.read_frame() => Event::Server(r),
                    f = self.client.read_frame(MAX_MESSAGE_LEN) => Event::Client(f),
                }
            } else {
                self.client.flush().await.map_err(|e| PgError::protocol(e.to_string()))?;
                self.client.shrink();
                tokio::select! {
                    f = self.client.read_frame(MAX_MESSAGE_LEN) => Event::Client(f),
                    _ = shutdown.wait_for(|v| *v) => Event::Shutdown,
                }
            };
            match ev {
                Event::Shutdown => {
                    return Err(PgError::fatal("57P01", "terminating connection: the gateway is shutting down"));
                }
                Event::Server(Ok((tag, body))) => self.on_server(tag, body)?,
                Event::Server(Err(e)) => self.upstream_lost(&e.to_string()),
                Event::Client(Ok(Some((tag, body)))) => {
                    if !self.on_client(tag, body).await? {
                        return Ok(());
                    }
                }
                Event::Client(Ok(None)) => return Ok(()),
                Event::Client(Err(ClientIoError::Decode(e))) => return Err(PgError::protocol(e.to_string())),
                Event::Client(Err(e)) => {
                    tracing::debug!(error = %e, "client connection ended");
                    return Ok(());
                }
            }
        }
    }

    /// One client message. Ok(false): the client said Terminate.
    async fn on_client(&mut self, tag: u8, body: Bytes) -> Result<bool, PgError> {
        tracing::trace!(pid = self.cancel.pid, tag = %char::from(tag), len = body.len(), queue = self.queue.len(), held = self.server.is_some(), "client message");
        let msg = decode(tag, &body).map_err(|e| PgError::protocol(e.to_string()))?;
        if matches!(msg, FrontendMessage::Terminate) {
            return Ok(false);
        }
        if self.skipping && !matches!(msg, FrontendMessage::Sync) {
            return Ok(true);
        }
        match msg {
            FrontendMessage::Query(text) => self.query(text, &body).await?,
            FrontendMessage::Parse(p) => self.parse(p, &body).await?,
            FrontendMessage::Bind(b) => self.bind(b, &body).await?,
            FrontendMessage::Describe(t) => self.describe(t, &body).await?,
            FrontendMessage::Execute { portal, .. } => {
                if self.ensure_server().await? {
                    self.forward(tag, &body)?;
                    let track = self.portal_track.get(portal).cloned();
                    self.queue.push_back(Pending::Execute { copy_ends: self.copy_ends, track });
                } else {
                    self.skipping = true;
                }
            }
            FrontendMessage::Close(t) => self.close(t, &body)?,
            FrontendMessage::Sync => {
                self.skipping = false;
                if self.server.is_some() {
                    self.forward(tag, &body)?;
                    self.queue.push_back(Pending::Sync { copy_ends: self.copy_ends });
                } else {
                    self.local_ready();
                }
            }
            FrontendMessage::Flush => {
                if self.server.is_some() {
                    self.forward(tag, &body)?;
                }
            }
            FrontendMessage::CopyData(_) => {
                if self.server.is_some() {
                    self.forward(tag, &body)?;
                }
            }
            FrontendMessage::CopyDone | FrontendMessage::CopyFail(_) => {
                if self.server.is_some() {
                    self.forward(tag, &body)?;
                    self.copy_ends += 1;
                }
            }
            FrontendMessage::Password(_) => return Err(PgError::protocol("unexpected password message")),
            FrontendMessage::Terminate => return Ok(false),
        }
        Ok(true)
    }

    async fn query(&mut self, text: &[u8], body: &[u8]) -> Result<(), PgError> {
        let sql = lossy(text);
        let effect = match self.understand(&sql).await {
            Ok(effect) => effect,
            Err(e) => {
                self.local_error(&e);
                self.local_ready();
                return Ok(());
            }
        };
        if !self.ensure_server().await? {
            self.local_ready();
            return Ok(());
        }
        self.note_effect(&effect)?;
        self.forward(b'Q', body)?;
        self.queue.push_back(Pending::Query { effect, failed: false });
        Ok(())
    }

    async fn parse(&mut self, p: Parse<'_>, body: &[u8]) -> Result<(), PgError> {
        let sql = lossy(p.query);
        let effect = match self.understand(&sql).await {
            Ok(effect) => effect,
            Err(e) => {
                self.refuse_extended(&e);
                return Ok(());
            }
        };
        if p.name.is_empty() {
            self.unnamed_track = tracked(&effect);
            if !self.ensure_server().await? {
                self.skipping = true;
                return Ok(());
            }
            self.note_effect(&effect)?;
            self.forward(b'P', body)?;
            self.queue.push_back(Pending::Parse { swallow: false, upstream: None, client: None });
            return Ok(());
        }
        if self.statements.contains_key(p.name) {
            let msg = format!("prepared statement \"{}\" already exists", lossy(p.name));
            self.refuse_extended(&PgError::error("42P05", msg));
            return Ok(());
        }
        let upstream = upstream_statement_name(p.query, p.param_types);
        if self.server.is_none() && effect == Effect::None && self.pool.manager().is_known(&upstream) {
            // Parsed fine before: answer now, prepare on demand at Bind.
            self.statements.insert(p.name.into(), Statement::new(upstream, &p, &effect));
            let mut b = BytesMut::new();
            backend::parse_complete(&mut b);
            self.local(b.freeze());
            return Ok(());
        }
        if !self.ensure_server().await? {
            self.skipping = true;
            return Ok(());
        }
        self.note_effect(&effect)?;
        self.statements.insert(p.name.into(), Statement::new(upstream.clone(), &p, &effect));
        let server = self.server()?;
        if server.prepared.contains(&*upstream) {
            let mut b = BytesMut::new();
            backend::parse_complete(&mut b);
            self.local(b.freeze());
        } else {
            p.encode_as(&mut server.wbuf, &upstream);
            server.prepared.insert(upstream.to_vec().into_boxed_slice());
            self.queue.push_back(Pending::Parse {
                swallow: false,
                upstream: Some(upstream),
                client: Some(p.name.into()),
            });
        }
        Ok(())
    }

    /// The client's statement `name`, prepared on the current connection
    /// (injecting a Parse if the connection lacks it).
    fn prepared(&mut self, name: &[u8]) -> Result<Option<Arc<[u8]>>, PgError> {
        let Some(stmt) = self.statements.get(name).cloned() else { return Ok(None) };
        let server = self.server()?;
        if !server.prepared.contains(&*stmt.upstream) {
            encode_parse(&mut server.wbuf, &stmt.upstream, &stmt.query, &stmt.param_types);
            server.prepared.insert(stmt.upstream.to_vec().into_boxed_slice());
            self.queue.push_back(Pending::Parse { swallow: true, upstream: Some(stmt.upstream.clone()), client: None });
        }
        Ok(Some(stmt.upstream.clone()))
    }

    async fn bind(&mut self, b: Bind<'_>, body: &[u8]) -> Result<(), PgError> {
        if !self.ensure_server().await? {
            self.skipping = true;
            return Ok(());
        }
        let track = if b.statement.is_empty() {
            self.unnamed_track.clone()
        } else {
            self.statements.get(b.statement).and_then(|s| s.track.clone())
        };
        match track {
            Some(t) => self.portal_track.insert(b.portal.into(), t),
            None => self.portal_track.remove(b.portal),
        };
        match (b.statement.is_empty(), self.prepared(b.statement)?) {
            (false, Some(up)) => b.encode_as(&mut self.server()?.wbuf, &up),
            _ => self.forward(b'B', body)?,
        }
        self.queue.push_back(Pending::Bind);
        Ok(())
    }

    async fn describe(&mut self, t: Target<'_>, body: &[u8]) -> Result<(), PgError> {
        if !self.ensure_server().await? {
            self.skipping = true;
            return Ok(());
        }
        if t.is_statement() {
            match (t.name.is_empty(), self.prepared(t.name)?) {
                (false, Some(up)) => t.encode_as(&mut self.server()?.wbuf, b'D', &up),
                _ => self.forward(b'D', body)?,
            }
            self.queue.push_back(Pending::DescribeStatement);
        } else {
            self.forward(b'D', body)?;
            self.queue.push_back(Pending::DescribePortal);
        }
        Ok(())
    }

    fn close(&mut self, t: Target<'_>, body: &[u8]) -> Result<(), PgError> {
        let local = if t.is_statement() && !t.name.is_empty() {
            self.statements.remove(t.name);
            true
        } else {
            // Portals and the unnamed statement do not outlive the connection's
            // transaction; without one there is nothing to close.
            self.server.is_none()
        };
        if local {
            let mut b = BytesMut::new();
            backend::close_complete(&mut b);
            self.local(b.freeze());
        } else {
            self.forward(b'C', body)?;
            self.queue.push_back(Pending::Close);
        }
        Ok(())
    }

    /// One upstream message.
    fn on_server(&mut self, tag: u8, body: Bytes) -> Result<(), PgError> {
        tracing::trace!(pid = self.cancel.pid, tag = %char::from(tag), len = body.len(), queue = self.queue.len(), "server message");
        match tag {
            b'E' => return self.on_server_error(body),
            b'S' => {
                // Opaque code may change a reported setting the parser depends
                // on; the server's ParameterStatus tells.
                if let Some(r) = unsafe_report(&body) {
                    if let Some(s) = self.server.as_mut() {
                        s.broken = true;
                    }
                    return Err(PgError::fatal("0A000", r.to_string()));
                }
                self.pass(tag, &body);
                return Ok(());
            }
            b'N' | b'A' => {
                self.pass(tag, &body);
                return Ok(());
            }
            _ => {}
        }
        let Some(front) = self.queue.front_mut() else {
            self.pass(tag, &body);
            return Ok(());
        };
        let (done, pass) = match (front, tag) {
            (Pending::Query { .. }, b'Z') => (true, true),
            (Pending::Query { .. }, _) => (false, true),
            (Pending::Parse { swallow, .. }, b'1') => (true, !*swallow),
            (Pending::Bind, b'2') | (Pending::Close, b'3') | (Pending::Sync { .. }, b'Z') => (true, true),
            (Pending::DescribeStatement | Pending::DescribePortal, b'T' | b'n') => (true, true),
            (Pending::Execute { .. }, b'C' | b'I' | b's') => (true, true),
            (Pending::Execute { copy_ends, .. }, b'G') => {
                let k = *copy_ends;
                self.on_copy_in(k);
                (false, true)
            }
            _ => (false, true),
        };
        if pass {
            self.pass(tag, &body);
        }
        if done {
            let entry = self.queue.pop_front();
            if let Some(Pending::Parse { upstream: Some(up), .. }) = &entry {
                self.pool.manager().remember(up.clone());
            }
            if let Some(Pending::Execute { track: Some(stmts), .. }) = &entry
                && tag == b'C'
            {
                self.record_sets(stmts.clone())?;
            }
            if tag == b'Z' {
                self.status = body.first().copied().unwrap_or(b'I');
                if self.status == b'I' {
                    // Portals end with their transaction.
                    self.portal_track.clear();
                }
                match entry {
                    Some(Pending::Query { effect: Effect::Track(stmts), failed: false }) => self.record_sets(stmts)?,
                    // Some of its SETs may have run (and committed) before the
                    // error: the connection's state is no longer known.
                    Some(Pending::Query { effect: Effect::Track(_), failed: true }) => self.server()?.dirty = true,
                    _ => {}
                }
            }
        }
        self.drain_locals();
        if tag == b'Z' && self.status == b'I' && self.queue.is_empty() && !self.pinned {
            self.release();
        }
        Ok(())
    }

    /// The server ran these session-state statements: they join the state to
    /// replay, and the connection now carries that state.
    fn record_sets(&mut self, stmts: Vec<String>) -> Result<(), PgError> {
        self.sets.extend(stmts);
        self.sets_hash = state::state_hash(&self.sets);
        let hash = self.sets_hash;
        let s = self.server()?;
        if !s.dirty {
            s.session_hash = hash;
        }
        Ok(())
    }

    fn on_server_error(&mut self, body: Bytes) -> Result<(), PgError> {
        let (severity, code, message) = parse_error_fields(&body);
        if severity == "FATAL" || severity == "PANIC" {
            // The upstream session is ending; the client's is not.
            self.upstream_lost(&format!("upstream FATAL {code}: {message}"));
            return Ok(());
        }
        self.pass(b'E', &body);
        if let Some(Pending::Query { failed, .. }) = self.queue.front_mut() {
            *failed = true;
            return Ok(());
        }
        // Extended protocol: the server skips everything up to Sync.
        let mut saw_sync = false;
        while let Some(front) = self.queue.front() {
            if matches!(front, Pending::Sync { .. }) {
                saw_sync = true;
                break;
            }
            if let Some(Pending::Parse { upstream, client, .. }) = self.queue.pop_front() {
                if let (Some(up), Some(s)) = (upstream, self.server.as_mut()) {
                    s.prepared.remove(&*up);
                }
                if let Some(name) = client {
                    self.statements.remove(&name);
                }
            }
        }
        if !saw_sync {
            self.skipping = true;
        }
        Ok(())
    }

    /// The upstream entered COPY FROM STDIN for an Execute sent after `k`
    /// copy ends. Until the client's next CopyDone/CopyFail the server ignores
    /// Sync, so Syncs the client pipelined in that window get no answer.
    fn on_copy_in(&mut self, k: u64) {
        self.queue.retain(|p| !matches!(p, Pending::Sync { copy_ends } if *copy_ends == k));
    }

    fn pass(&mut self, tag: u8, body: &[u8]) {
        put_frame(&mut self.client.wbuf, tag, |b| b.put_slice(body));
    }

    fn drain_locals(&mut self) {
        while let Some(Pending::Local(_)) = self.queue.front() {
            if let Some(Pending::Local(b)) = self.queue.pop_front() {
                self.client.wbuf.extend_from_slice(&b);
            }
        }
    }

    /// The upstream connection broke: tell the client, drop the connection
    /// (the pool opens a fresh one), keep the session.
    fn upstream_lost(&mut self, why: &str) {
        tracing::warn!(tenant = %self.principal.tenant, error = why, "upstream connection lost");
        if let Some(s) = self.server.as_mut() {
            s.broken = true;
        }
        let waiting_ready = self.queue.iter().any(|p| matches!(p, Pending::Query { .. } | Pending::Sync { .. }));
        self.queue.clear();
        self.pinned = self.door.session_mode;
        self.release();
        PgError::upstream_lost().encode(&mut self.client.wbuf);
        if waiting_ready {
            backend::ready_for_query(&mut self.client.wbuf, b'I');
        } else {
            self.skipping = true;
        }
    }

    /// Send a FATAL error (best effort) before the session closes.
    pub async fn send_fatal(&mut self, e: &PgError) {
        e.encode(&mut self.client.wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
    }

    /// The client is gone: make the connection safe for the next client.
    pub async fn finish(mut self) {
        let Some(mut conn) = self.server.take() else { return };
        self.cancel.set(None);
        if !self.queue.is_empty() {
            // Mid-request (or mid-COPY): the connection's state is unknown.
            conn.broken = true;
            return;
        }
        let mut cleanup = Vec::new();
        if self.status != b'I' {
            cleanup.push("ROLLBACK");
        }
        if self.pinned {
            cleanup.push("DISCARD ALL");
        }
        for sql in cleanup {
            match tokio::time::timeout(CLEANUP_TIMEOUT, conn.simple(sql)).await {
                Ok(Ok(_)) => {}
                _ => {
                    conn.broken = true;
                    return;
                }
            }
        }
        if self.pinned {
            conn.prepared.clear();
            conn.session_hash = 0;
            conn.dirty = false;
        }
    }
}

/// `RESET ALL` and the state's statements on `conn`; the ParameterStatus
/// values it reported.
/// Bring a connection to a client's session state. A dirty connection ran
/// code the model could not follow (opaque code may have created temporary
/// tables, listened, taken advisory locks or prepared statements, which
/// `RESET ALL` does not undo), so it is wiped with `DISCARD ALL` first (on
/// its own: it cannot run inside the implicit transaction of a multi-statement
/// query), and forgets the statements it held.
async fn replay(conn: &mut PooledConn, stmts: &[String]) -> Result<Vec<(String, String)>, WireError> {
    if conn.dirty {
        conn.simple_collect("DISCARD ALL").await?;
        conn.prepared.clear();
    }
    conn.simple_collect(&state::replay_sql(stmts)).await
}

/// Pass an upstream SQLSTATE through when it looks like one.
fn known_code(code: &str) -> &'static str {
    match code {
        "42704" => "42704",
        "22023" => "22023",
        "42501" => "42501",
        _ => "08004",
    }
}
