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
//! some messages itself, in order (CloseComplete for a statement close,
//! `DEALLOCATE`, refusals from the pipeline), and swallow the answers to
//! messages it injected (the Parse that prepares a client's statement on a
//! connection that lacks a fresh copy, see [`super::statements`]).
//!
//! A refusal by the gateway inside a transaction or a pipeline also makes
//! the server fail the transaction (an injected statement that fails to
//! parse, its error swallowed), so the outcome is what Postgres gives for
//! an error at that point: nothing of the batch commits.
//!
//! Rows a statement returns (DataRow, and CopyData of a `COPY … TO STDOUT`)
//! are counted as they pass; past the tenant's `max_result_bytes` the rest
//! are dropped, the statement is cancelled on the server and the client gets
//! ERROR 54000 in place of its end (the server's 57014, or its
//! CommandComplete when the statement finished before the cancel arrived: the
//! connection is then not reused, since the cancel may still arrive; in a
//! transaction block that one case leaves the server's transaction open).
//! A single row longer than the cap is not even read into memory: the
//! upstream connection hands over its length alone and discards its bytes
//! as they arrive (`ServerConn::row_cap`).
//!
//! When the server ends the upstream session (FATAL, e.g. `57P01` from
//! `pg_terminate_backend` or a restart) while the client holds it, the
//! client gets that error and its connection closes, as it would direct.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;

use super::PgDoor;
use super::cancel::{CancelTarget, Registration};
use super::client::{ClientConn, ClientIoError};
use super::keywatch::Subscription;
use super::messages::error::PgError;
use super::messages::extended::{Bind, Parse, Target, encode_parse, encode_sync};
use super::messages::{FrontendMessage, MAX_MESSAGE_LEN, backend, decode, put_frame};
use super::routing;
use super::state::{self, Effect};
use super::statements::{ClientStatement, Registry};
use crate::control::quotas::{KeyLimits, Quotas};
use crate::pipeline::auth::Principal;
use crate::pipeline::{Action, Door, Operation};
use crate::sql::rewrite::{rename_statements, statement_named};
use crate::sql::statement::DiscardTarget;
use crate::sql::{Kind, Parsed, SessionEffect, Statement, rules};
use crate::upstream::pg_wire::UpstreamTarget;
use crate::upstream::pg_wire::pool::{PooledConn, WirePool};
use crate::upstream::pg_wire::prepared::{Copy, StatementKey, copy_name, next_seq};
use crate::upstream::pg_wire::{WireError, parse_error_fields};
use crate::upstream::replicas::Node;

/// How long cleanup of a connection (ROLLBACK, DISCARD ALL) may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Most session-state statements (distinct settings) a session replays.
const MAX_SESSION_SETTINGS: usize = 1_000;

/// How many times a checkout may meet a connection that died while idle.
const CHECKOUT_ATTEMPTS: usize = 3;

/// The statement the door sends to make the server fail the current
/// transaction after a refusal (a syntax error: nothing runs).
const ABORT_SQL: &[u8] = b"sluice_refused_statement";

/// What the door expects upstream to answer, in order.
#[derive(Debug)]
enum Pending {
    Query {
        effect: Effect,
        failed: bool,
        /// A lone `DISCARD ALL` (resets the session when it succeeds).
        discards_all: bool,
        /// `DEALLOCATE ALL` on a pinned connection: its copies are gone too.
        deallocates_all: bool,
    },
    /// `copy`: the statement copy this Parse creates on the connection;
    /// `client`: the client's name for it; `unnamed`: the generation of the
    /// client's unnamed statement it creates; `swallow`: injected by the door.
    Parse {
        swallow: bool,
        copy: Option<(StatementKey, Box<[u8]>)>,
        client: Option<Box<[u8]>>,
        unnamed: Option<u64>,
    },
    Bind,
    DescribeStatement,
    DescribePortal,
    /// `copy_ends`: CopyDone/CopyFail messages forwarded before this one (see
    /// [`Session::on_copy_in`]).
    Execute {
        copy_ends: u64,
        track: Option<Vec<String>>,
        discards_all: bool,
    },
    Close,
    Sync {
        copy_ends: u64,
        swallow: bool,
    },
    /// The injected failing Parse after a refusal: its error is swallowed.
    Abort,
    /// The injected failing Query after a refusal: its error is swallowed,
    /// its ReadyForQuery passed.
    AbortQuery,
    /// Bytes the door answers itself when this point of the stream is reached.
    Local(Bytes),
}

/// The statements to record for a tracked effect.
fn tracked(effect: &Effect) -> Option<Vec<String>> {
    match effect {
        Effect::Track(t) => Some(t.clone()),
        _ => None,
    }
}

fn is_discard_all(p: &Parsed) -> bool {
    p.statements.len() == 1 && p.statements[0].session.contains(&SessionEffect::Discard(DiscardTarget::All))
}

fn no_such_statement(name: &[u8]) -> PgError {
    if name.is_empty() {
        PgError::error("26000", "unnamed prepared statement does not exist")
    } else {
        PgError::error("26000", format!("prepared statement \"{}\" does not exist", lossy(name)))
    }
}

/// Identifies a session to the connections it uses (unnamed statement owner).
fn next_session_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// See [`Session::replay`].
struct Replay {
    frames: Vec<(u8, Bytes)>,
    /// [`ClientConn::produced`] when the transaction started: the answer
    /// starts there in the client's stream.
    mark: u64,
}

pub struct Session<S> {
    door: Arc<PgDoor>,
    principal: Principal,
    client: ClientConn<S>,
    /// The tenant's pool on the primary.
    pool: WirePool,
    server: Option<PooledConn>,
    /// Where the held connection is (see [`super::routing`]), and whether
    /// its transaction started as a write (it counts for read-your-writes
    /// when it ends).
    node: Node,
    writing: bool,
    /// The next checkout goes to the primary whatever the statement.
    force_primary: bool,
    /// The client's messages since its transaction started on a replica,
    /// kept while the client has seen nothing of the answer: if the replica
    /// fails first, they run again on the primary ([`Session::replica_failed`]).
    replay: Option<Replay>,
    /// Messages to run again on the primary (set by a replica failure).
    requeue: Vec<(u8, Bytes)>,
    /// Running `requeue`: a Parse may meet its own earlier registration.
    rerunning: bool,
    queue: VecDeque<Pending>,
    /// This session's id (owner of unnamed statements on connections).
    id: u64,
    statements: Registry,
    /// The session state to replay (startup settings, then tracked SETs).
    sets: Vec<String>,
    /// The startup settings alone (what `DISCARD ALL` returns to).
    startup_sets: Vec<String>,
    /// The setting each entry of `sets` sets or resets (found once, when
    /// the entry is recorded), and the same for `startup_sets`.
    set_names: Vec<Option<String>>,
    startup_names: Vec<Option<String>>,
    /// Portals bound from a statement with session state to record.
    portal_track: HashMap<Box<[u8]>, Vec<String>>,
    sets_hash: u64,
    pinned: bool,
    /// Session mode after `DISCARD ALL`: replay the startup settings on the
    /// held connection before the next request.
    replay_due: bool,
    /// After an error in the extended protocol: discard until Sync.
    skipping: bool,
    /// Extended-protocol messages were forwarded since the last Sync.
    batch_open: bool,
    /// The upstream session ended under the client: close after flushing.
    closing: bool,
    /// Transaction status as last reported to the client.
    status: u8,
    /// CopyDone/CopyFail messages forwarded so far.
    copy_ends: u64,
    cancel: Registration,
    /// Tells when the session's key stops being valid; its alarm also
    /// rings at shutdown and when the running statement's deadline passes.
    key: Subscription,
    /// The tenant's connection budget, held with the upstream connection.
    permit: Option<OwnedSemaphorePermit>,
    /// A statement runs with a deadline set on the alarm: the tenant's
    /// statement timeout plus [`DEADLINE_GRACE`] (whatever opaque code did to
    /// the server's own timeout); and whether the door has cancelled it
    /// already.
    deadline: bool,
    cancelled: bool,
    /// The door is shutting down: end once no transaction is open.
    stopping: bool,
    /// Bytes of rows the running statement has returned, and whether they
    /// passed the tenant's `max_result_bytes` (see the module doc).
    result_bytes: u64,
    over_result_cap: bool,
}

enum Event {
    Server(std::io::Result<(u8, Bytes)>),
    Client(Result<Option<(u8, Bytes)>, ClientIoError>),
    /// The alarm rang (see [`super::alarm`]).
    Alarm,
}

/// Past the tenant's statement timeout, how long the door waits for the
/// server's own timeout before it cancels the statement itself (and again
/// before it gives the connection up).
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// A ParameterStatus (`name\0value\0`) that would make the server read
/// statement text differently from the gateway's parser.
fn unsafe_report(body: &[u8]) -> Option<rules::Refusal> {
    let mut parts = body.split(|b| *b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    rules::unsafe_setting(name, value)
}

/// Query text as a string. Valid UTF-8 (the norm) is checked by
/// `str::from_utf8`'s word-at-a-time ASCII path, several times cheaper per
/// byte than `from_utf8_lossy`'s chunk walk.
fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
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
        let ceilings = rules::Ceilings::new(&door.svc.config.postgres, principal.quotas.statement_timeout_ms);
        if let Some(r) = settings.iter().find_map(|(k, v)| rules::pg_startup_setting(k, v, &ceilings)) {
            return Err((client, PgError::fatal("42501", r.to_string())));
        }
        let pool = match door.pools.pool(&door.svc, &principal, door.pool_wait) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, tenant = %principal.tenant, "build upstream pool");
                return Err((client, PgError::fatal("08001", "could not open a connection to the tenant database")));
            }
        };
        let cancel = door.cancels.register();
        let key = door.keys.subscribe(principal.key_id);
        let mut s = Session {
            door,
            principal,
            client,
            pool,
            server: None,
            node: Node::Primary,
            writing: false,
            force_primary: false,
            replay: None,
            requeue: Vec::new(),
            rerunning: false,
            queue: VecDeque::new(),
            id: next_session_id(),
            statements: Registry::default(),
            sets: Vec::new(),
            startup_sets: Vec::new(),
            set_names: Vec::new(),
            startup_names: Vec::new(),
            portal_track: HashMap::new(),
            sets_hash: 0,
            pinned: false,
            replay_due: false,
            skipping: false,
            batch_open: false,
            closing: false,
            status: b'I',
            copy_ends: 0,
            cancel,
            key,
            permit: None,
            deadline: false,
            cancelled: false,
            stopping: false,
            result_bytes: 0,
            over_result_cap: false,
        };
        if let Err(e) = s.login(&settings).await {
            return Err((s.client, e));
        }
        Ok(s)
    }

    async fn login(&mut self, settings: &[(String, String)]) -> Result<(), PgError> {
        let (mut conn, _, _) = self.checkout(Node::Primary).await.map_err(|mut e| {
            e.severity = super::messages::error::Severity::Fatal;
            e
        })?;
        // Settings that differ from the upstream's defaults become the session state.
        let defaults: HashMap<String, String> =
            conn.params.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_ascii_lowercase())).collect();
        let kept: Vec<_> = settings.iter().filter(|(k, v)| defaults.get(k) != Some(&v.to_ascii_lowercase())).collect();
        self.sets = kept.iter().map(|(k, v)| state::setting_statement(k, v)).collect();
        self.set_names = kept.iter().map(|(k, _)| Some(k.clone())).collect();
        self.startup_sets = self.sets.clone();
        self.startup_names = self.set_names.clone();
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
            let target = self.pool.manager().target.clone();
            self.attach(conn, target, Node::Primary);
        } else {
            self.permit = None;
        }
        Ok(())
    }

    /// Take a connection from the pool (no state sync), once the tenant's
    /// connection budget (shared with the HTTP door) has room. The pool
    /// discards connections that died while idle.
    async fn checkout(&mut self, node: Node) -> Result<(PooledConn, Arc<UpstreamTarget>, Node), PgError> {
        if self.permit.is_none() {
            let q = &self.principal.quotas;
            match self.door.svc.budgets.acquire(self.principal.tenant_id, q.pg_pool_size, self.door.pool_wait).await {
                Ok(p) => self.permit = Some(p),
                Err(e) => return Err(PgError::error("57P03", format!("{e}; retry later"))),
            }
        }
        if node != Node::Primary {
            let door = &self.door;
            match door.pools.pool_on(&door.svc, &self.principal, node, door.pool_wait) {
                Ok(pool) => match pool.get().await {
                    Ok(c) => return Ok((c, pool.manager().target.clone(), node)),
                    Err(e) => {
                        tracing::warn!(error = %e, node = %node.label(), "replica unreachable; reading from the primary");
                        if !matches!(e, deadpool::managed::PoolError::Timeout(deadpool::managed::TimeoutType::Wait)) {
                            door.svc.replicas.failed(node);
                        }
                    }
                },
                Err(e) => tracing::warn!(error = %e, node = %node.label(), "replica pool"),
            }
        }
        // An idle connection is usually there: taken without building the
        // wait's timer, which only a wait needs.
        let now = deadpool::managed::Timeouts { wait: Some(Duration::ZERO), ..self.pool.timeouts() };
        let got = match self.pool.timeout_get(&now).await {
            Err(deadpool::managed::PoolError::Timeout(deadpool::managed::TimeoutType::Wait)) => self.pool.get().await,
            got => got,
        };
        if got.is_err() {
            self.permit = None;
        }
        match got {
            Ok(c) => Ok((c, self.pool.manager().target.clone(), Node::Primary)),
            Err(deadpool::managed::PoolError::Timeout(_)) => {
                Err(PgError::error("57P03", "no upstream connection became free in time; retry later"))
            }
            Err(e) => {
                tracing::warn!(error = %e, tenant = %self.principal.tenant, "open upstream connection");
                Err(PgError::error("08001", "could not open a connection to the tenant database"))
            }
        }
    }

    fn attach(&mut self, mut conn: PooledConn, target: Arc<UpstreamTarget>, node: Node) {
        self.cancel.set(Some(CancelTarget { target, pid: conn.pid, secret: conn.secret }));
        conn.row_cap = Some(self.row_cap());
        self.server = Some(conn);
        self.node = node;
    }

    fn release(&mut self) {
        self.cancel.set(None);
        if std::mem::take(&mut self.writing) {
            self.door.svc.replicas.wrote(self.principal.key_id);
        }
        self.replay = None;
        if let Some(mut conn) = self.server.take() {
            conn.row_cap = None;
            conn.broken |= conn.mid_message();
            // A large message passed through: its buffer goes, not to the pool.
            conn.shrink();
            if conn.dirty {
                // Code the door could not follow ran here (it may hold session
                // advisory locks, LISTEN, temp tables): wipe it now, not at the
                // next checkout, so nothing outlives the client that made it.
                tokio::spawn(wipe(conn));
            }
        }
        self.permit = None;
        self.clear_deadline();
        self.status = b'I';
    }

    /// Bring `conn` to this session's state: replay settings when they
    /// differ, close statement copies queued for closing.
    async fn prepare_conn(&self, conn: &mut PooledConn) -> Result<(), WireError> {
        // Both need the server and are rare next to a checkout that needs
        // nothing: boxed, so the checkout's future stays small.
        if conn.dirty || conn.session_hash != self.sets_hash {
            Box::pin(replay(conn, &self.sets)).await?;
            conn.session_hash = self.sets_hash;
            conn.dirty = false;
        }
        if conn.prepared.to_close.is_empty() {
            return Ok(());
        }
        Box::pin(conn.close_statements()).await.map(drop)
    }

    /// Make sure the session holds a connection with its state applied.
    /// Ok(false): the error has been answered (the caller then skips to
    /// Sync or answers ReadyForQuery).
    async fn ensure_server(&mut self) -> Result<bool, PgError> {
        self.ensure_server_for(false).await
    }

    /// [`Session::ensure_server`] for a transaction that only reads so far
    /// (`reads`): a new checkout may go to a read replica.
    async fn ensure_server_for(&mut self, reads: bool) -> Result<bool, PgError> {
        // The common case, without building the checkout future.
        if self.server.is_some() && !self.replay_due {
            return Ok(true);
        }
        Box::pin(self.ensure_server_slow(reads)).await
    }

    /// Where a new checkout goes.
    fn route(&mut self, reads: bool) -> Node {
        let replicas = &self.door.svc.replicas;
        if replicas.is_empty() {
            return Node::Primary;
        }
        let forced = std::mem::take(&mut self.force_primary);
        let reads = reads && !self.pinned;
        self.writing = !reads;
        if !reads {
            replicas.wrote(self.principal.key_id);
        }
        replicas.route("pg", reads && !forced, self.principal.key_id)
    }

    async fn ensure_server_slow(&mut self, reads: bool) -> Result<bool, PgError> {
        if let Some(mut conn) = self.server.take() {
            if self.replay_due && self.queue.is_empty() {
                self.replay_due = false;
                if let Err(e) = self.prepare_conn(&mut conn).await {
                    tracing::warn!(error = %e, "replay session state upstream");
                    conn.broken = true;
                    self.release();
                    self.local_error(&PgError::upstream_lost());
                    return Ok(false);
                }
            }
            self.server = Some(conn);
            return Ok(true);
        }
        let wanted = self.route(reads);
        for attempt in 1..=CHECKOUT_ATTEMPTS {
            let (mut conn, target, node) = match self.checkout(wanted).await {
                Ok(c) => c,
                Err(e) => {
                    self.local_error(&e);
                    return Ok(false);
                }
            };
            match self.prepare_conn(&mut conn).await {
                Ok(()) => {
                    self.attach(conn, target, node);
                    return Ok(true);
                }
                Err(e) => {
                    // Nothing of the client's has reached this connection:
                    // drop it and try a fresh one.
                    tracing::warn!(error = %e, attempt, "prepare upstream connection");
                    conn.broken = true;
                }
            }
        }
        self.permit = None;
        self.local_error(&PgError::upstream_lost());
        Ok(false)
    }

    /// A session that keeps its connection (pinned, session mode) never
    /// checks one out, where evicted statement copies are normally closed:
    /// close them here, at a point where no portal can be open.
    async fn close_evicted(&mut self) {
        const CLOSE_AT: usize = 64;
        let idle = self.queue.is_empty() && self.status == b'I' && !self.batch_open;
        let Some(conn) = self.server.as_mut() else { return };
        if !idle || conn.prepared.to_close.len() < CLOSE_AT {
            return;
        }
        match conn.close_statements().await {
            // A LISTENing session's notifications still reach it.
            Ok(other) => other.into_iter().for_each(|(tag, body)| self.pass(tag, &body)),
            Err(_) => conn.broken = true,
        }
    }

    /// Answer `bytes` at the current point of the response stream.
    /// Whether a checkout for this extended-protocol message may go to a
    /// read replica: the message's statement only reads (`reads`) and so
    /// does the rest of its batch (see [`super::routing`]).
    async fn batch_reads(&self, reads: bool, parsed: Option<(&[u8], bool)>) -> bool {
        if !reads || self.server.is_some() || self.pinned || self.door.svc.replicas.is_empty() {
            return false;
        }
        let (svc, tenant) = (&self.door.svc, self.principal.tenant_id);
        routing::batch_reads_only(self.client.buffered_frames(), parsed, &self.statements, &svc.sql, tenant).await
    }

    /// Can the transaction on a replica still run again on the primary?
    /// Nothing of the answer has been sent to the client yet (it may be
    /// buffered: a replica that fails mid-answer flushes what it had
    /// buffered with its error, and the door reads them together).
    fn can_replay(&self) -> bool {
        self.replay.as_ref().is_some_and(|r| r.mark >= self.client.sent())
    }

    /// The replica serving this transaction failed before the client saw
    /// any of the answer: drop that connection and run the client's
    /// messages again on the primary (`down`: the replica itself is gone).
    fn replica_failed(&mut self, down: bool) {
        let node = self.node;
        tracing::info!(node = %node.label(), down, "a read failed on a replica; running it on the primary");
        metrics::counter!("sluice_pg_replica_retries_total", "door" => "pg", "node" => node.label()).increment(1);
        if down {
            self.door.svc.replicas.failed(node);
        }
        if let Some(s) = self.server.as_mut() {
            s.broken = true;
        }
        self.queue.clear();
        // What the replica answered is not sent yet (`can_replay`): take it
        // back; the run on the primary answers again.
        if let Some(r) = &self.replay {
            self.client.unproduce_to(r.mark);
        }
        self.requeue = self.replay.take().map(|r| r.frames).unwrap_or_default();
        self.writing = false;
        self.skipping = false;
        self.batch_open = false;
        self.release();
    }

    /// Run the client's messages again after [`Session::replica_failed`],
    /// on the primary.
    async fn rerun(&mut self) -> Result<bool, PgError> {
        let frames = std::mem::take(&mut self.requeue);
        self.rerunning = true;
        let mut more = true;
        for (i, (tag, body)) in frames.into_iter().enumerate() {
            if i == 0 {
                self.force_primary = true;
            }
            more = Box::pin(self.on_client(tag, body)).await?;
            if !more {
                break;
            }
        }
        self.rerunning = false;
        self.force_primary = false;
        Ok(more)
    }

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

    fn local_complete(&mut self, tag: &str) {
        let mut b = BytesMut::new();
        backend::command_complete(&mut b, tag);
        self.local(b.freeze());
    }

    /// Does a refusal now need the server to fail its transaction too?
    fn in_transaction(&self) -> bool {
        self.server.is_some() && (self.status != b'I' || self.batch_open)
    }

    /// An ERROR in the extended protocol: answer it and skip until Sync. In
    /// a transaction or an open batch the server fails it as well.
    fn refuse_extended(&mut self, e: &PgError) -> Result<(), PgError> {
        self.local_error(e);
        if self.in_transaction() {
            encode_parse(&mut self.server()?.wbuf, b"sl_abort", ABORT_SQL, &[]);
            self.queue.push_back(Pending::Abort);
        }
        self.skipping = true;
        Ok(())
    }

    /// An ERROR for a simple Query: answer it and ReadyForQuery; in a
    /// transaction the server fails it as well (and reports status `E`).
    fn refuse_query(&mut self, e: &PgError) -> Result<(), PgError> {
        self.local_error(e);
        if self.server.is_some() && self.status != b'I' {
            let s = self.server()?;
            put_frame(&mut s.wbuf, b'Q', |b| {
                b.put_slice(ABORT_SQL);
                b.put_u8(0);
            });
            s.unnamed_owner = None;
            self.queue.push_back(Pending::AbortQuery);
        } else {
            self.local_ready();
        }
        Ok(())
    }

    /// Apply the tenant's quotas and the key's limits as the control plane
    /// has them now (an operator changed them while this session was open).
    fn take_limits(&mut self, limits: &(Quotas, KeyLimits)) {
        let (quotas, key_limits) = limits;
        if self.principal.quotas == *quotas && self.principal.key_limits == *key_limits {
            return;
        }
        tracing::debug!(tenant = %self.principal.tenant, session = self.id, "quotas changed: applied to the open session");
        self.principal.quotas = quotas.clone();
        self.principal.key_limits = key_limits.clone();
        let cap = self.row_cap();
        if let Some(s) = self.server.as_mut() {
            s.row_cap = Some(cap);
        }
    }

    /// A row longer than the tenant's result cap is refused whatever came
    /// before it: the upstream connection does not read it into memory.
    fn row_cap(&self) -> usize {
        usize::try_from(self.principal.quotas.max_result_bytes).unwrap_or(usize::MAX)
    }

    /// Parse `sql` (Postgres's grammar, cached) and run the pipeline on its
    /// statements.
    async fn understand(&self, sql: &str) -> Result<Arc<Parsed>, PgError> {
        let parsed = self.door.svc.sql.parse(self.principal.tenant_id, sql).await.map_err(|e| PgError::syntax(&e))?;
        let action = Action::Sql { text: sql, statements: &parsed.statements };
        let op = Operation { door: Door::Pg, principal: &self.principal, action };
        self.door.svc.pipeline.admit(&op).await.map_err(|e| PgError::from(&e))?;
        Ok(parsed)
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
    pub async fn run(&mut self) -> Result<(), PgError> {
        loop {
            if self.closing {
                let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
                return Ok(());
            }
            if let Some(limits) = self.key.limits_now() {
                self.take_limits(&limits);
            }
            // The alarm rang: a revoked key, a passed deadline and shutdown go
            // before any buffered frame.
            if self.key.alarm.take() {
                if let Some(why) = self.key.invalid_now() {
                    return Err(key_invalid(why));
                }
                if self.deadline && self.key.deadline_passed() {
                    self.on_deadline()?;
                }
                self.stopping |= self.key.shutting_down();
            }
            let ev = if let Some(server) = self.server.as_mut() {
                if !self.client.has_frame() {
                    server.flush().await.ok();
                }
                if !server.has_frame() {
                    self.client.flush().await.map_err(|e| PgError::protocol(e.to_string()))?;
                }
                // A frame already buffered needs no waiting: take it without
                // building the select (most frames of a batch or an answer
                // arrive together). Answers first, as they came first; the
                // select below runs whenever both buffers are drained.
                if let Some(r) = server.buffered_frame() {
                    Event::Server(r)
                } else if let Some(f) = self.client.buffered_frame(MAX_MESSAGE_LEN) {
                    Event::Client(f)
                } else {
                    tokio::select! {
                        r = server.read_frame() => Event::Server(r),
                        f = self.client.read_frame(MAX_MESSAGE_LEN) => Event::Client(f),
                        _ = self.key.alarm.rung() => Event::Alarm,
                    }
                }
            } else {
                self.client.flush().await.map_err(|e| PgError::protocol(e.to_string()))?;
                self.client.shrink();
                if self.stopping {
                    return Err(PgError::fatal("57P01", "terminating connection: the gateway is shutting down"));
                }
                if let Some(f) = self.client.buffered_frame(MAX_MESSAGE_LEN) {
                    Event::Client(f)
                } else {
                    tokio::select! {
                        f = self.client.read_frame(MAX_MESSAGE_LEN) => Event::Client(f),
                        _ = self.key.alarm.rung() => Event::Alarm,
                    }
                }
            };
            match ev {
                // Looked at the top of the loop.
                Event::Alarm => {}
                Event::Server(Ok((tag, body))) => {
                    self.on_server(tag, body)?;
                    self.track_deadline(tag);
                    if self.requeue.is_empty() {
                        self.drain_server()?;
                    }
                    // A replica failed under the batch (in this frame or a
                    // drained one): it runs again on the primary now.
                    if !self.requeue.is_empty() && !self.rerun().await? {
                        return Ok(());
                    }
                }
                Event::Server(Err(_)) if self.can_replay() => {
                    self.replica_failed(true);
                    if !self.rerun().await? {
                        return Ok(());
                    }
                }
                Event::Server(Err(e)) => return Err(self.upstream_lost(&e.to_string())),
                Event::Client(Ok(Some((tag, body)))) => {
                    if !self.on_client(tag, body).await? {
                        return Ok(());
                    }
                    // The rest of a batch that is already buffered (an
                    // extended-protocol batch arrives whole), without going
                    // round the loop for each message, unless the server's
                    // answer or the alarm needs the loop first.
                    while self.may_drain_client() {
                        let Some(Ok(Some((tag, body)))) = self.client.buffered_frame(MAX_MESSAGE_LEN) else { break };
                        if !self.on_client(tag, body).await? {
                            return Ok(());
                        }
                    }
                }
                Event::Client(Ok(None)) => return Ok(()),
                Event::Client(Err(ClientIoError::Decode(e))) => return Err(PgError::protocol(e.to_string())),
                Event::Client(Err(ClientIoError::NoRoom(n))) => return Err(PgError::no_room(n)),
                Event::Client(Err(e)) => {
                    tracing::debug!(error = %e, "client connection ended");
                    return Ok(());
                }
            }
        }
    }

    /// Whether the next buffered client message may be handled without going
    /// round the loop: not when the loop must look first at the alarm, the
    /// end of the session (shutdown once no transaction is open) or the
    /// server's answer.
    fn may_drain_client(&self) -> bool {
        let stop = self.closing || self.key.alarm.is_rung() || (self.stopping && self.server.is_none());
        !stop && !self.server.as_ref().is_some_and(|s| s.has_frame())
    }

    /// The rest of an answer that is already buffered, without going round
    /// the session loop for each message. It stops at anything the loop must
    /// handle first: the alarm, a statement to run again, the end of the
    /// upstream session, a read error (left in the buffer for the loop).
    fn drain_server(&mut self) -> Result<(), PgError> {
        while self.requeue.is_empty() && !self.closing && !self.key.alarm.is_rung() {
            let Some(server) = self.server.as_mut() else { break };
            let Some(Ok((tag, body))) = server.buffered_frame() else { break };
            self.on_server(tag, body)?;
            self.track_deadline(tag);
        }
        Ok(())
    }

    /// Per statement: the tenant's statement timeout and the grace.
    fn statement_budget(&self) -> Option<Duration> {
        let ms = u64::try_from(self.principal.quotas.statement_timeout_ms).ok().filter(|ms| *ms > 0)?;
        Some(Duration::from_millis(ms) + DEADLINE_GRACE)
    }

    /// A statement was sent: start its clock if none is running.
    fn start_deadline(&mut self) {
        if !self.deadline {
            self.set_deadline();
            self.cancelled = false;
        }
    }

    /// Start the running statement's clock (when the tenant has a timeout).
    fn set_deadline(&mut self) {
        match self.statement_budget() {
            Some(b) => {
                self.key.set_deadline(b);
                self.deadline = true;
            }
            None => self.clear_deadline(),
        }
    }

    fn clear_deadline(&mut self) {
        if std::mem::take(&mut self.deadline) {
            self.key.alarm.clear_deadline();
        }
    }

    /// After an upstream message: a statement ended, so the next one (if
    /// any is queued) starts its own clock.
    fn track_deadline(&mut self, tag: u8) {
        if !self.deadline || !matches!(tag, b'C' | b'E' | b'Z' | b'I' | b's') {
            return;
        }
        let running = self.queue.iter().any(|p| matches!(p, Pending::Query { .. } | Pending::Execute { .. }));
        if running {
            self.set_deadline();
        } else {
            self.clear_deadline();
        }
        self.cancelled = false;
    }

    /// The running statement passed its deadline: cancel it on the server;
    /// if it still runs a grace later, give the connection up (the client
    /// gets 57014 and its session ends, as a connection would direct whose
    /// server stopped answering).
    fn on_deadline(&mut self) -> Result<(), PgError> {
        metrics::counter!("sluice_pg_deadline_cancels_total").increment(1);
        if self.cancelled {
            if let Some(s) = self.server.as_mut() {
                s.broken = true;
            }
            self.queue.clear();
            return Err(PgError::fatal(
                "57014",
                "canceling statement due to statement timeout (the tenant's limit, enforced by the gateway); the statement did not stop, so the connection is closed",
            ));
        }
        self.cancelled = true;
        self.key.set_deadline(DEADLINE_GRACE);
        self.cancel_upstream("cancel a statement past the tenant's timeout");
        Ok(())
    }

    /// Ask the server to cancel what runs on the held connection (spawned;
    /// a failure is logged with `what`).
    fn cancel_upstream(&self, what: &'static str) {
        if let Some(s) = self.server.as_ref() {
            let Some(target) = self.cancel.target() else { return };
            let (pid, secret) = (s.pid, s.secret);
            tokio::spawn(async move {
                if let Err(e) = crate::upstream::pg_wire::cancel(&target, pid, secret).await {
                    tracing::warn!(error = %e, "{what}");
                }
            });
        }
    }

    /// A row of `len` bytes from the running statement: false if it passes
    /// the tenant's `max_result_bytes` (or an earlier one did), so it is
    /// dropped; the first time, the statement is cancelled.
    fn room_for_row(&mut self, len: usize) -> bool {
        if self.over_result_cap {
            return false;
        }
        self.result_bytes = self.result_bytes.saturating_add(5 + len as u64);
        if self.result_bytes <= u64::try_from(self.principal.quotas.max_result_bytes).unwrap_or(u64::MAX) {
            return true;
        }
        self.over_result_cap = true;
        metrics::counter!("sluice_pg_result_cap_cancels_total", "tenant" => self.principal.tenant.to_string())
            .increment(1);
        self.cancel_upstream("cancel a statement past the tenant's max_result_bytes");
        false
    }

    /// The body of the ERROR that ends a statement whose result passed the cap.
    fn result_too_large(&self) -> Bytes {
        let e = PgError::error(
            "54000",
            format!(
                "the statement's result is larger than {} bytes (the tenant's max_result_bytes); the statement was cancelled; select fewer rows or columns",
                self.principal.quotas.max_result_bytes
            ),
        );
        let mut b = BytesMut::new();
        e.encode(&mut b);
        b.split_off(5).freeze()
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
        if self.node != Node::Primary && self.server.is_some() {
            if !self.batch_open && !self.queue.is_empty() && self.status == b'I' {
                // What follows a batch sent to a replica may write: let that
                // batch finish (and its connection go back) first.
                self.finish_replica_batch().await?;
            }
            if !self.can_replay() {
                // The client has seen part of the answer: no running it again.
                self.replay = None;
            } else if self.server.is_some()
                && let Some(r) = self.replay.as_mut()
            {
                r.frames.push((tag, body.clone()));
            }
        }
        let idle = self.server.is_none();
        let mark = self.client.produced();
        match msg {
            FrontendMessage::Query(text) => self.query(text, &body).await?,
            FrontendMessage::Parse(p) => self.parse(p, &body).await?,
            FrontendMessage::Bind(b) => self.bind(b, &body).await?,
            FrontendMessage::Describe(t) => self.describe(t, &body).await?,
            FrontendMessage::Execute { portal, .. } => {
                if self.ensure_server().await? {
                    self.forward(tag, &body)?;
                    self.batch_open = true;
                    let track = self.portal_track.get(portal).cloned();
                    let discards_all = track.as_ref().is_some_and(|t| t.is_empty());
                    let track = track.filter(|t| !t.is_empty());
                    self.queue.push_back(Pending::Execute { copy_ends: self.copy_ends, track, discards_all });
                    self.start_deadline();
                } else {
                    self.skipping = true;
                }
            }
            FrontendMessage::Close(t) => self.close(t, &body)?,
            FrontendMessage::Sync => {
                self.skipping = false;
                self.batch_open = false;
                if self.server.is_some() {
                    self.forward(tag, &body)?;
                    self.queue.push_back(Pending::Sync { copy_ends: self.copy_ends, swallow: false });
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
        if idle && self.server.is_some() && self.node != Node::Primary {
            self.replay = Some(Replay { frames: vec![(tag, body)], mark });
        }
        Ok(true)
    }

    /// Read the answers to what was sent to a replica until none is
    /// pending (the connection goes back when its transaction is over).
    async fn finish_replica_batch(&mut self) -> Result<(), PgError> {
        while !self.queue.is_empty() {
            let limit = self.statement_budget().unwrap_or(Duration::from_secs(3600)) + DEADLINE_GRACE;
            let Some(server) = self.server.as_mut() else { break };
            server.flush().await.ok();
            let frame = tokio::time::timeout(limit, server.read_frame())
                .await
                .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time")));
            match frame {
                Ok((tag, body)) => {
                    self.on_server(tag, body)?;
                    self.track_deadline(tag);
                    // Rows reach the client as they come, as in the main loop.
                    if self.server.as_ref().is_none_or(|s| !s.has_frame()) || self.client.wbuf.len() > 64 << 10 {
                        self.client.flush().await.map_err(|e| PgError::protocol(e.to_string()))?;
                    }
                }
                Err(_) if self.can_replay() => self.replica_failed(true),
                Err(e) => return Err(self.upstream_lost(&e.to_string())),
            }
            if !self.requeue.is_empty() && !self.rerun().await? {
                return Err(PgError::protocol("client ended the session"));
            }
        }
        Ok(())
    }

    async fn query(&mut self, text: &[u8], body: &[u8]) -> Result<(), PgError> {
        let sql = lossy(text);
        let parsed = match self.understand(&sql).await {
            Ok(p) => p,
            Err(e) => return self.refuse_query(&e),
        };
        // A simple query drops the unnamed statement (on the server too).
        self.statements.set_unnamed(None);
        if self.status != b'E' && self.answer_deallocate(&parsed) {
            return Ok(());
        }
        // SQL-level EXECUTE: of the client's protocol statements (run their
        // copies), or of SQL-PREPAREd ones (only on a pinned connection).
        // DEALLOCATE name among other statements: of the client's own (the
        // copy goes with it).
        let mut executes = Vec::new();
        let mut deallocated = Vec::new();
        for st in &parsed.statements {
            let Some(name) = statement_named(st) else { continue };
            match self.statements.get(name.as_bytes()) {
                Some(s) => {
                    if st.kind == Kind::Deallocate {
                        deallocated.push(name.to_owned());
                    }
                    executes.push((name.to_owned(), s));
                }
                None if !self.pinned && self.status != b'E' => {
                    return self.refuse_query(&no_such_statement(name.as_bytes()));
                }
                None => {}
            }
        }
        let effect = state::effect(&parsed.statements);
        let discards_all = is_discard_all(&parsed);
        let deallocates_all = self.pinned
            && parsed.statements.iter().any(|s| s.session.contains(&SessionEffect::Deallocate { name: None }));
        let reads = self.server.is_none()
            && !self.door.svc.replicas.is_empty()
            && parsed.statements.iter().all(Statement::replica_safe);
        if !self.ensure_server_for(reads).await? {
            self.local_ready();
            return Ok(());
        }

        self.note_effect(&effect)?;
        let rewritten = if executes.is_empty() {
            None
        } else {
            let mut names = HashMap::new();
            for (name, st) in executes {
                if names.contains_key(&name) {
                    continue;
                }
                let (copy, injected) = self.copy_for(&st)?;
                if injected {
                    encode_sync(&mut self.server()?.wbuf);
                    self.queue.push_back(Pending::Sync { copy_ends: self.copy_ends, swallow: true });
                }
                names.insert(name, String::from_utf8_lossy(&copy).into_owned());
            }
            for name in deallocated {
                if let Some(st) = self.statements.get(name.as_bytes()) {
                    let copy = names.get(&name).cloned().unwrap_or_default();
                    self.server()?.prepared.forget(&st.key, copy.as_bytes());
                    self.statements.remove(name.as_bytes());
                }
            }
            rename_statements(&sql, &parsed.statements, |n| names.get(n).cloned())
        };
        let server = self.server()?;
        server.unnamed_owner = None;
        match rewritten {
            Some(text) => put_frame(&mut server.wbuf, b'Q', |b| {
                b.put_slice(text.as_bytes());
                b.put_u8(0);
            }),
            None => put_frame(&mut server.wbuf, b'Q', |b| b.put_slice(body)),
        }
        self.queue.push_back(Pending::Query { effect, failed: false, discards_all, deallocates_all });
        self.start_deadline();
        Ok(())
    }

    /// `DEALLOCATE name` / `DEALLOCATE ALL` alone in a query acts on the
    /// client's own statements; true if answered here.
    fn answer_deallocate(&mut self, parsed: &Parsed) -> bool {
        let [st] = parsed.statements.as_slice() else { return false };
        let Some(SessionEffect::Deallocate { name }) = st.session.first() else { return false };
        match name {
            Some(n) if self.statements.remove(n.as_bytes()) => self.local_complete("DEALLOCATE"),
            // SQL-PREPAREd statements live on the pinned connection.
            Some(_) if self.pinned => return false,
            Some(n) => self.local_error(&no_such_statement(n.as_bytes())),
            None => {
                self.statements.clear_named();
                if self.pinned {
                    return false;
                }
                self.local_complete("DEALLOCATE ALL");
            }
        }
        self.local_ready();
        true
    }

    /// The name of a copy of `st` on the current connection prepared no
    /// earlier than the client's Parse, injecting a Parse when there is none.
    /// The bool: a Parse was injected.
    fn copy_for(&mut self, st: &ClientStatement) -> Result<(Box<[u8]>, bool), PgError> {
        let server = self.server()?;
        if let Some(c) = server.prepared.fresh(&st.key, st.since) {
            return Ok((c.name.clone(), false));
        }
        let seq = next_seq();
        let name = copy_name(seq);
        encode_parse(&mut server.wbuf, &name, &st.query, &st.param_types);
        server.prepared.insert(st.key, Copy { name: name.clone(), seq });
        self.queue.push_back(Pending::Parse {
            swallow: true,
            copy: Some((st.key, name.clone())),
            client: None,
            unnamed: None,
        });
        Ok((name, true))
    }

    /// The server name to use for the client's statement `name` (Bind,
    /// Describe), preparing it on the connection when needed. Err: the
    /// client has no such statement.
    fn resolve(&mut self, name: &[u8]) -> Result<Result<Box<[u8]>, PgError>, PgError> {
        if name.is_empty() {
            let Some((st, generation)) = self.statements.unnamed() else { return Ok(Err(no_such_statement(name))) };
            let owner = Some((self.id, generation));
            let server = self.server()?;
            if server.unnamed_owner != owner {
                encode_parse(&mut server.wbuf, b"", &st.query, &st.param_types);
                server.unnamed_owner = owner;
                self.queue.push_back(Pending::Parse {
                    swallow: true,
                    copy: None,
                    client: None,
                    unnamed: Some(generation),
                });
            }
            return Ok(Ok(Box::default()));
        }
        match self.statements.get(name) {
            Some(st) => Ok(Ok(self.copy_for(&st)?.0)),
            // A SQL-PREPAREd statement (the session is pinned to its connection).
            None if self.pinned => Ok(Ok(name.into())),
            None => Ok(Err(no_such_statement(name))),
        }
    }

    async fn parse(&mut self, p: Parse<'_>, body: &[u8]) -> Result<(), PgError> {
        let sql = lossy(p.query);
        let parsed = match self.understand(&sql).await {
            Ok(parsed) => parsed,
            Err(e) => return self.refuse_extended(&e),
        };
        if !p.name.is_empty() {
            if self.rerunning
                && self.statements.get(p.name).is_some_and(|s| s.key == StatementKey::of(p.query, p.param_types))
            {
                // Its first run registered it (the replica's answer never came).
                self.statements.remove(p.name);
            }
            if self.statements.contains(p.name) {
                let msg = format!("prepared statement \"{}\" already exists", lossy(p.name));
                return self.refuse_extended(&PgError::error("42P05", msg));
            }
            if let Err(e) = self.statements.check_room(p.query, p.param_types) {
                return self.refuse_extended(&e);
            }
        }
        let effect = state::effect(&parsed.statements);
        let reads_only = parsed.statements.iter().all(Statement::replica_safe);
        // The unnamed statement is never shared, so it needs no key.
        let key = if p.name.is_empty() { StatementKey::UNNAMED } else { StatementKey::of(p.query, p.param_types) };
        // Copies: a view into the message would keep the client's whole read
        // buffer alive (and make it reallocate). The same text as the unnamed
        // statement it replaces (a driver's query in a loop) shares its bytes.
        let (query, param_types) = match self.statements.unnamed() {
            Some((old, _)) if p.name.is_empty() && old.query == p.query && old.param_types == p.param_types => {
                (old.query.clone(), old.param_types.clone())
            }
            _ => (Bytes::copy_from_slice(p.query), Bytes::copy_from_slice(p.param_types)),
        };
        let new_statement = |since| {
            Arc::new(ClientStatement {
                key,
                query,
                param_types,
                since,
                track: tracked(&effect),
                discards_all: is_discard_all(&parsed),
                pins: effect == Effect::Pin,
                dirties: effect == Effect::Dirty,
                reads_only,
            })
        };
        if self.server.is_none() && !p.name.is_empty() && effect == Effect::None && self.pool.manager().is_known(&key) {
            // Prepared fine on this pool before: answer now; the statement is
            // prepared on a connection at its first Bind or Describe. So a
            // client that prepares outside a transaction (libpq's PQprepare,
            // pgbench -M prepared) never waits for a connection just for that.
            let st = new_statement(next_seq());
            if p.name.is_empty() {
                self.statements.set_unnamed(Some(st));
            } else {
                self.statements.insert(p.name, st);
            }
            let mut b = BytesMut::new();
            backend::parse_complete(&mut b);
            self.local(b.freeze());
            return Ok(());
        }
        let reads = self.batch_reads(reads_only, Some((p.name, reads_only))).await;
        if !self.ensure_server_for(reads).await? {
            self.skipping = true;
            return Ok(());
        }
        self.close_evicted().await;
        self.note_effect(&effect)?;
        self.batch_open = true;
        let seq = next_seq();
        let st = new_statement(seq);
        if p.name.is_empty() {
            let generation = self.statements.set_unnamed(Some(st));
            let owner = Some((self.id, generation));
            self.server()?.unnamed_owner = owner;
            self.forward(b'P', body)?;
            self.queue.push_back(Pending::Parse {
                swallow: false,
                copy: None,
                client: None,
                unnamed: Some(generation),
            });
            return Ok(());
        }
        // Always a real Parse: the answer (errors, and the Describe that
        // follows) reflects the catalog as of now, as it would direct.
        let name = copy_name(seq);
        let server = self.server()?;
        p.encode_as(&mut server.wbuf, &name);
        server.prepared.insert(key, Copy { name: name.clone(), seq });
        self.statements.insert(p.name, st);
        self.queue.push_back(Pending::Parse {
            swallow: false,
            copy: Some((key, name)),
            client: Some(p.name.into()),
            unnamed: None,
        });
        Ok(())
    }

    async fn bind(&mut self, b: Bind<'_>, body: &[u8]) -> Result<(), PgError> {
        let st = if b.statement.is_empty() {
            self.statements.unnamed().map(|(s, _)| s)
        } else {
            self.statements.get(b.statement)
        };
        let reads = self.batch_reads(st.as_ref().is_some_and(|s| s.reads_only), None).await;
        if !self.ensure_server_for(reads).await? {
            self.skipping = true;
            return Ok(());
        }
        // An empty track list marks a DISCARD ALL portal.
        match st.as_ref().and_then(|s| if s.discards_all { Some(Vec::new()) } else { s.track.clone() }) {
            Some(t) => self.portal_track.insert(b.portal.into(), t),
            // (An empty map is not hashed into: the common case.)
            None if !self.portal_track.is_empty() => self.portal_track.remove(b.portal),
            None => None,
        };
        let name = match self.resolve(b.statement)? {
            Ok(n) => n,
            Err(e) => return self.refuse_extended(&e),
        };
        // The statement runs on this connection, whichever one its Parse was on.
        if let Some(st) = &st {
            if st.pins {
                self.pinned = true;
            }
            if st.dirties {
                self.server()?.dirty = true;
            }
        }
        self.batch_open = true;
        if *name == *b.statement {
            self.forward(b'B', body)?;
        } else {
            b.encode_as(&mut self.server()?.wbuf, &name);
        }
        self.queue.push_back(Pending::Bind);
        Ok(())
    }

    async fn describe(&mut self, t: Target<'_>, body: &[u8]) -> Result<(), PgError> {
        let reads = t.is_statement() && {
            let st =
                if t.name.is_empty() { self.statements.unnamed().map(|(s, _)| s) } else { self.statements.get(t.name) };
            self.batch_reads(st.is_some_and(|s| s.reads_only), None).await
        };
        if !self.ensure_server_for(reads).await? {
            self.skipping = true;
            return Ok(());
        }
        self.batch_open = true;
        if t.is_statement() {
            let name = match self.resolve(t.name)? {
                Ok(n) => n,
                Err(e) => return self.refuse_extended(&e),
            };
            if *name == *t.name {
                self.forward(b'D', body)?;
            } else {
                t.encode_as(&mut self.server()?.wbuf, b'D', &name);
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
            // The client's name goes; the copy stays for others. A
            // SQL-PREPAREd statement (pinned) is closed on the server.
            self.statements.remove(t.name) || !self.pinned || self.server.is_none()
        } else if t.is_statement() {
            let mine = self.statements.unnamed().map(|(_, g)| (self.id, g));
            self.statements.set_unnamed(None);
            match self.server.as_mut() {
                Some(s) if mine.is_some() && s.unnamed_owner == mine => {
                    s.unnamed_owner = None;
                    false
                }
                _ => true,
            }
        } else {
            // Portals do not outlive the connection's transaction; without
            // one there is nothing to close.
            self.server.is_none()
        };
        if local {
            let mut b = BytesMut::new();
            backend::close_complete(&mut b);
            self.local(b.freeze());
        } else {
            self.batch_open = true;
            self.forward(b'C', body)?;
            self.queue.push_back(Pending::Close);
        }
        Ok(())
    }

    /// One upstream message.
    fn on_server(&mut self, tag: u8, mut body: Bytes) -> Result<(), PgError> {
        tracing::trace!(pid = self.cancel.pid, tag = %char::from(tag), len = body.len(), queue = self.queue.len(), "server message");
        let mut tag = tag;
        if matches!(tag, b'C' | b'E' | b'I' | b's') {
            // The statement ended: the next one has its own result cap.
            self.result_bytes = 0;
            if std::mem::take(&mut self.over_result_cap) {
                if tag != b'E' {
                    // It finished before the cancel arrived: the cancel may
                    // still hit a later statement, so the connection goes.
                    if let Some(s) = self.server.as_mut() {
                        s.broken = true;
                    }
                    tag = b'E';
                }
                if parse_error_fields(&body).0 != "FATAL" {
                    body = self.result_too_large();
                }
            }
        }
        match tag {
            b'D' | b'd' => {
                let len = self.server.as_mut().and_then(|s| s.take_skipped()).unwrap_or(body.len());
                if !self.room_for_row(len) {
                    return Ok(());
                }
            }
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
            (Pending::Query { .. } | Pending::AbortQuery, b'Z') => (true, true),
            (Pending::Query { .. } | Pending::AbortQuery, _) => (false, true),
            (Pending::Parse { swallow, .. }, b'1') => (true, !*swallow),
            (Pending::Sync { swallow, .. }, b'Z') => (true, !*swallow),
            (Pending::Bind, b'2') | (Pending::Close, b'3') => (true, true),
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
            if let Some(Pending::Parse { copy: Some((key, _)), .. }) = &entry {
                self.pool.manager().remember(*key);
            }
            if let Some(Pending::Execute { track, discards_all, .. }) = &entry
                && tag == b'C'
            {
                if let Some(stmts) = track {
                    self.record_sets(stmts.clone())?;
                }
                if *discards_all {
                    self.discarded_all();
                }
            }
            if tag == b'Z' {
                self.status = body.first().copied().unwrap_or(b'I');
                if self.status == b'I' {
                    // Portals end with their transaction.
                    self.portal_track.clear();
                }
                match entry {
                    Some(Pending::Query { failed: false, discards_all: true, .. }) => self.discarded_all(),
                    Some(Pending::Query { failed: false, deallocates_all: true, .. }) => {
                        self.server()?.prepared.clear()
                    }
                    Some(Pending::Query { effect: Effect::Track(stmts), failed: false, .. }) => {
                        self.record_sets(stmts)?
                    }
                    // Some of its SETs may have run (and committed) before the
                    // error: the connection's state is no longer known.
                    Some(Pending::Query { effect: Effect::Track(_), failed: true, .. }) => self.server()?.dirty = true,
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

    /// `DISCARD ALL` ran: the session is as new (its startup settings stay,
    /// as they would direct), and so is the connection.
    fn discarded_all(&mut self) {
        self.statements.clear();
        self.portal_track.clear();
        self.sets = self.startup_sets.clone();
        self.set_names = self.startup_names.clone();
        self.sets_hash = state::state_hash(&self.sets);
        self.pinned = self.door.session_mode;
        if let Some(s) = self.server.as_mut() {
            s.prepared.clear();
            s.unnamed_owner = None;
            s.session_hash = 0;
            s.dirty = false;
            self.replay_due = self.sets_hash != 0;
        }
    }

    /// The server ran these session-state statements: they join the state to
    /// replay, and the connection now carries that state.
    ///
    /// A setting set again replaces its earlier statement (a client that
    /// sets `application_name` on every checkout keeps one entry), so the
    /// state only grows with distinct settings, and is bounded by
    /// [`MAX_SESSION_SETTINGS`].
    fn record_sets(&mut self, stmts: Vec<String>) -> Result<(), PgError> {
        for sql in stmts {
            let name = self.setting_name(&sql);
            if let Some(n) = &name {
                let mut i = 0;
                while i < self.sets.len() {
                    if self.set_names[i].as_ref() == Some(n) {
                        self.sets.remove(i);
                        self.set_names.remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
            self.sets.push(sql);
            self.set_names.push(name);
        }
        if self.sets.len() > MAX_SESSION_SETTINGS {
            return Err(PgError::fatal(
                "54000",
                format!(
                    "too many distinct session settings (the gateway replays at most {MAX_SESSION_SETTINGS} per session)"
                ),
            ));
        }
        self.sets_hash = state::state_hash(&self.sets);
        let hash = self.sets_hash;
        let s = self.server()?;
        if !s.dirty {
            s.session_hash = hash;
        }
        Ok(())
    }

    /// The setting a tracked statement sets or resets (from the statement
    /// model; the text was parsed when the client sent it, so this is
    /// usually a cache hit).
    fn setting_name(&self, sql: &str) -> Option<String> {
        let parsed = self.door.svc.sql.parse_blocking(self.principal.tenant_id, sql).ok()?;
        parsed.statements.first()?.session.iter().find_map(|e| match e {
            SessionEffect::Set { name, .. } | SessionEffect::SetConfig { name: Some(name), .. } => Some(name.clone()),
            SessionEffect::Reset { name: Some(name) } => Some(name.clone()),
            SessionEffect::SessionCharacteristics => Some("session characteristics".into()),
            _ => None,
        })
    }

    fn on_server_error(&mut self, body: Bytes) -> Result<(), PgError> {
        let (severity, code, message) = parse_error_fields(&body);
        let fatal = severity == "FATAL" || severity == "PANIC";
        if self.can_replay() && (fatal || crate::upstream::replicas::retry_on_primary(&code)) {
            self.replica_failed(fatal || code.starts_with("08"));
            return Ok(());
        }
        if severity == "FATAL" || severity == "PANIC" {
            // The upstream session is ending under the client: it gets the
            // server's own error, then its connection closes, as direct.
            tracing::warn!(tenant = %self.principal.tenant, %code, %message, "upstream session ended");
            if let Some(s) = self.server.as_mut() {
                s.broken = true;
            }
            self.queue.clear();
            self.pass(b'E', &body);
            self.closing = true;
            return Ok(());
        }
        match self.queue.front_mut() {
            Some(Pending::Query { failed, .. }) => {
                *failed = true;
                self.pass(b'E', &body);
                return Ok(());
            }
            // Our own abort: the client already has the real error.
            Some(Pending::AbortQuery) => return Ok(()),
            Some(Pending::Abort) => {}
            _ => self.pass(b'E', &body),
        }
        // Extended protocol: the server skips everything up to Sync.
        let mut saw_sync = false;
        while let Some(front) = self.queue.front() {
            if let Pending::Sync { .. } = front {
                saw_sync = true;
                break;
            }
            // Everything else goes, local answers to later messages too: the
            // server skips those messages, so a direct client gets no answer.
            if let Some(Pending::Parse { copy, client, unnamed, .. }) = self.queue.pop_front() {
                if let (Some((key, name)), Some(s)) = (copy, self.server.as_mut()) {
                    s.prepared.forget(&key, &name);
                }
                if let Some(name) = client {
                    self.statements.remove(&name);
                }
                if let Some(generation) = unnamed {
                    self.statements.drop_unnamed_gen(generation);
                    if let Some(s) = self.server.as_mut() {
                        s.unnamed_owner = None;
                    }
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
        self.queue.retain(|p| !matches!(p, Pending::Sync { copy_ends, swallow: false } if *copy_ends == k));
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

    /// The upstream connection broke without a word from the server (it was
    /// killed, or the network failed): the client's session ends with a
    /// FATAL, as a direct client's would end.
    fn upstream_lost(&mut self, why: &str) -> PgError {
        tracing::warn!(tenant = %self.principal.tenant, error = why, "upstream connection lost");
        if let Some(s) = self.server.as_mut() {
            s.broken = true;
        }
        self.queue.clear();
        PgError::fatal("08006", "connection to the upstream database was lost")
    }

    /// Send a FATAL error (best effort) before the session closes.
    pub async fn send_fatal(&mut self, e: &PgError) {
        e.encode(&mut self.client.wbuf);
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await {
            self.client.linger().await;
        }
    }

    /// The client is gone: make the connection safe for the next client.
    pub async fn finish(mut self) {
        let Some(mut conn) = self.server.take() else { return };
        self.cancel.set(None);
        if !self.queue.is_empty() || conn.broken {
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

/// Bring a connection to a client's session state: `RESET ALL` and the
/// state's statements; returns the ParameterStatus values it reported. A
/// dirty connection ran code the model could not follow (opaque code may
/// have created temporary tables, listened, taken advisory locks or
/// prepared statements, which `RESET ALL` does not undo), so it is wiped
/// with `DISCARD ALL` first (on its own: it cannot run inside the implicit
/// transaction of a multi-statement query), and forgets the statements it
/// held.
async fn replay(conn: &mut PooledConn, stmts: &[String]) -> Result<Vec<(String, String)>, WireError> {
    if conn.dirty {
        conn.simple_collect("DISCARD ALL").await?;
        conn.prepared.clear();
    }
    conn.simple_collect(&state::replay_sql(stmts)).await
}

/// `DISCARD ALL` on a connection going back to the pool; broken if that fails.
async fn wipe(mut conn: PooledConn) {
    match tokio::time::timeout(CLEANUP_TIMEOUT, conn.simple_collect("DISCARD ALL")).await {
        Ok(Ok(_)) => {
            conn.prepared.clear();
            conn.session_hash = 0;
            conn.dirty = false;
        }
        _ => conn.broken = true,
    }
}

/// The FATAL that ends a session whose API key stopped being valid.
fn key_invalid(why: &str) -> PgError {
    PgError::fatal("28000", format!("terminating connection: {why}"))
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
