//! The statement model: what one SQL statement does, as read from the parse
//! tree Postgres's own grammar produces ([`super::parser`]). Every stage that
//! needs to know about SQL reads this and nothing else: the shared-cluster
//! rules ([`super::rules`]), the policy plugin's input, the Postgres door's
//! session tracking, the HTTP batch checks, storage quotas
//! ([`Statement::may_grow_storage`]) and replica routing
//! ([`Statement::replica_safe`]).

use serde::Serialize;

/// What kind of statement this is (the top of its parse tree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    /// `COPY … TO` (reads).
    CopyTo,
    /// `COPY … FROM` (writes).
    CopyFrom,
    /// Schema change: see [`Statement::ddl`].
    Ddl,
    Truncate,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT…: see [`Statement::transaction`].
    Transaction,
    /// `SET`, `SET LOCAL`, `SET TRANSACTION`, `SET SESSION CHARACTERISTICS`.
    Set,
    /// `RESET name`, `RESET ALL`.
    Reset,
    Show,
    Discard,
    Listen,
    Unlisten,
    Notify,
    /// `DO $$ … $$`: an anonymous code block (always opaque).
    Do,
    /// `CALL proc(…)` (always opaque).
    Call,
    /// `EXPLAIN`: see [`Statement::explain`].
    Explain,
    /// SQL-level `PREPARE name AS …`.
    Prepare,
    /// SQL-level `EXECUTE name` (opaque: the statement is not in the text).
    Execute,
    Deallocate,
    /// `DECLARE`, `FETCH`, `MOVE`, `CLOSE`.
    Cursor,
    Lock,
    /// `VACUUM`, `ANALYZE`, `CLUSTER`, `REINDEX`, `REFRESH MATERIALIZED VIEW`, `CHECKPOINT`.
    Maintenance,
    /// `LOAD`, and anything else.
    Utility,
}

impl Kind {
    /// Stable lower-case name (metrics, error messages, policy input).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Select => "select",
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Merge => "merge",
            Kind::CopyTo => "copy-to",
            Kind::CopyFrom => "copy-from",
            Kind::Ddl => "ddl",
            Kind::Truncate => "truncate",
            Kind::Transaction => "transaction",
            Kind::Set => "set",
            Kind::Reset => "reset",
            Kind::Show => "show",
            Kind::Discard => "discard",
            Kind::Listen => "listen",
            Kind::Unlisten => "unlisten",
            Kind::Notify => "notify",
            Kind::Do => "do",
            Kind::Call => "call",
            Kind::Explain => "explain",
            Kind::Prepare => "prepare",
            Kind::Execute => "execute",
            Kind::Deallocate => "deallocate",
            Kind::Cursor => "cursor",
            Kind::Lock => "lock",
            Kind::Maintenance => "maintenance",
            Kind::Utility => "utility",
        }
    }
}

/// Transaction control statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TxControl {
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Release,
    RollbackTo,
    /// `PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED`.
    TwoPhase,
}

impl TxControl {
    /// Ends (or starts) the enclosing transaction, unlike savepoints.
    pub fn ends_or_starts(self) -> bool {
        !matches!(self, TxControl::Savepoint | TxControl::Release | TxControl::RollbackTo)
    }
}

/// A schema change: `action` is `create`, `alter`, `drop`, `comment`, `grant`,
/// `revoke`, `security-label` or `import`; `object` the object type in lower
/// case with spaces (`table`, `index`, `function`, `role`, `database`,
/// `materialized view`…).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ddl {
    pub action: String,
    pub object: String,
}

/// What `EXPLAIN` explains. With `analyze` the inner statement really runs,
/// so the outer statement's writes, DDL and session effects are the inner's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Explain {
    pub analyze: bool,
    pub inner: Kind,
}

/// How a statement uses a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    /// Target of INSERT/UPDATE/DELETE/MERGE/COPY FROM/SELECT INTO, or of DDL.
    Write,
}

/// A table, view or sequence the statement names (CTE names excluded, with
/// their scoping). `schema` is `None` when unqualified (resolved by search_path).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Relation {
    pub schema: Option<String>,
    pub name: String,
    pub access: Access,
}

impl Relation {
    /// `schema.name` or `name`.
    pub fn qualified(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// `DISCARD` targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscardTarget {
    All,
    Plans,
    Sequences,
    Temp,
}

/// A change to session state that outlives the statement (or, with `local`,
/// lasts until the end of the transaction).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "effect")]
pub enum SessionEffect {
    /// `SET [LOCAL] name …`. `value` is the first argument's text when it is
    /// a literal (`None` for `DEFAULT` or several values).
    Set {
        name: String,
        local: bool,
        value: Option<String>,
    },
    /// `set_config(name, value, is_local)`: each part `None` unless a literal.
    SetConfig {
        name: Option<String>,
        value: Option<String>,
        local: Option<bool>,
    },
    /// `RESET name` (`None`: `RESET ALL`).
    Reset {
        name: Option<String>,
    },
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION …`.
    SessionCharacteristics,
    Discard(DiscardTarget),
    Listen {
        channel: String,
    },
    /// `UNLISTEN` (`None`: `UNLISTEN *`).
    Unlisten {
        channel: Option<String>,
    },
    /// A temporary table, view or sequence is created.
    TempObject,
    /// SQL-level `PREPARE name`.
    Prepare {
        name: String,
    },
    /// `DEALLOCATE name` (`None`: `DEALLOCATE ALL`).
    Deallocate {
        name: Option<String>,
    },
    /// `DECLARE … WITH HOLD` (a cursor that outlives its transaction).
    HoldCursor,
    /// `LOAD 'library'`.
    Load,
    /// A session-level advisory lock function (`pg_advisory_lock`, `pg_try_advisory_lock`, shared variants).
    AdvisoryLock,
    /// `pg_advisory_unlock*`.
    AdvisoryUnlock,
}

/// One statement as the gateway understands it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// The statement's own text (without the `;` that ended it).
    pub text: String,
    /// Byte offset of `text` in the query string it came from.
    pub offset: usize,
    pub kind: Kind,
    /// For [`Kind::Transaction`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction: Option<TxControl>,
    /// For [`Kind::Ddl`] (and `EXPLAIN ANALYZE` of DDL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ddl: Option<Ddl>,
    /// For [`Kind::Explain`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<Explain>,
    /// `COPY` to or from a file or program on the database server.
    pub copy_server_side: bool,
    /// Changes data or schema, takes row or table locks, or may do so
    /// (opaque code): such a statement needs the primary.
    pub writes: bool,
    pub relations: Vec<Relation>,
    /// Functions called, as written (`lower`, `pg_catalog.now`, `app.f`).
    pub functions: Vec<String>,
    /// Runs code static analysis cannot see: `DO` bodies, `CALL`, SQL-level
    /// `EXECUTE`, functions that are not Postgres built-ins.
    pub opaque: bool,
    pub session: Vec<SessionEffect>,
    /// For [`Kind::Execute`]: the prepared statement it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executes: Option<String>,
    /// `BEGIN` / `START TRANSACTION` with `READ ONLY`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

impl Statement {
    /// May make the database bigger: a write that is not a removal. Refused
    /// while the tenant's database is over its size quota; `DELETE`,
    /// `TRUNCATE`, `DROP`, locks, `VACUUM` and plain reads stay allowed so a
    /// tenant can always get back under it.
    pub fn may_grow_storage(&self) -> bool {
        if !self.writes {
            return false;
        }
        let kind = match self.explain {
            Some(e) if e.analyze => e.inner,
            Some(_) => return false,
            None => self.kind,
        };
        match kind {
            Kind::Delete | Kind::Truncate | Kind::Lock | Kind::Maintenance | Kind::Transaction => false,
            Kind::Ddl => !self.ddl.as_ref().is_some_and(|d| matches!(d.action.as_str(), "drop" | "comment" | "revoke")),
            // Row locks (FOR UPDATE) write only tuple headers.
            Kind::Select => self.opaque || self.relations.iter().any(|r| r.access == Access::Write),
            _ => true,
        }
    }

    /// May run on a read replica (a hot standby): a read that changes
    /// nothing — no data, schema, locks, session state or opaque code — or
    /// the start of a read-only transaction (whose later statements are held
    /// to it by the server, as they would be direct).
    pub fn replica_safe(&self) -> bool {
        if self.writes || self.opaque || !self.session.is_empty() || self.copy_server_side {
            return false;
        }
        if self.relations.iter().any(|r| r.access == Access::Write) {
            return false;
        }
        match self.kind {
            Kind::Select | Kind::Show | Kind::CopyTo => true,
            Kind::Explain => self.explain.is_some_and(|e| matches!(e.inner, Kind::Select)),
            Kind::Transaction => self.transaction == Some(TxControl::Begin) && self.read_only,
            _ => false,
        }
    }

    /// Starts or ends a transaction (savepoints do not).
    pub fn controls_transaction(&self) -> bool {
        self.transaction.is_some_and(TxControl::ends_or_starts)
    }
}
