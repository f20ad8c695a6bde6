//! From libpg_query's parse tree to the [`Statement`] model.
//!
//! The tree is walked as the JSON form of its protobuf (`serde_json::Value`),
//! generically: every field of every node is visited. The `pg_query` crate's
//! own typed walker visits only a subset of node types, and a relation or
//! function the walk misses would be a policy bypass, so completeness wins
//! over the few microseconds the JSON form costs (paid once per distinct
//! statement text: results are cached, see [`super::parser`]).

use pg_query::protobuf::{DiscardMode, ObjectType, OnCommitAction, TransactionStmtKind, VariableSetKind};
use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::builtins;
use super::statement::{Access, Ddl, DiscardTarget, Explain, Kind, Relation, SessionEffect, Statement, TxControl};

/// `DECLARE … WITH HOLD` (`CURSOR_OPT_HOLD` in parsenodes.h).
const CURSOR_OPT_HOLD: i64 = 0x0020;

/// Functions that write (or need a transaction id) although they are built in.
const WRITING_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
];

/// Built-ins that run SQL handed to them as text (or read whole schemas):
/// opaque, like user code.
const SQL_RUNNING_FUNCTIONS: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
];

const ADVISORY_LOCKS: &[&str] =
    &["pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared"];
const ADVISORY_UNLOCKS: &[&str] = &["pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all"];

/// The single `{"NodeName": {...}}` inside a `Node` (`{"node": {...}}`) or a bare oneof.
pub fn node(v: &Value) -> Option<(&str, &Map<String, Value>)> {
    let m = v.as_object()?;
    let inner = match m.get("node") {
        Some(n) if m.len() == 1 => n.as_object()?,
        _ => m,
    };
    if inner.len() != 1 {
        return None;
    }
    let (k, body) = inner.iter().next()?;
    if !k.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    Some((k.as_str(), body.as_object()?))
}

fn s<'a>(m: &'a Map<String, Value>, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

fn i(m: &Map<String, Value>, key: &str) -> i64 {
    m.get(key).and_then(Value::as_i64).unwrap_or(0)
}

fn b(m: &Map<String, Value>, key: &str) -> bool {
    m.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn present(m: &Map<String, Value>, key: &str) -> bool {
    m.get(key).is_some_and(|v| !v.is_null())
}

/// `a.b.c` from a list of `String` nodes.
fn dotted(list: Option<&Value>) -> String {
    let mut out = String::new();
    for part in list.and_then(Value::as_array).into_iter().flatten() {
        if let Some(("String", m)) = node(part) {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(s(m, "sval"));
        }
    }
    out
}

/// The text of a literal argument (`'x'`, `42`, `true`, `'x'::text`).
fn literal(v: &Value) -> Option<String> {
    let (name, m) = node(v)?;
    match name {
        "AConst" => {
            if b(m, "isnull") {
                return None;
            }
            let (kind, val) = node(m.get("val")?)?;
            match kind {
                "Sval" => Some(s(val, "sval").to_owned()),
                "Ival" => Some(i(val, "ival").to_string()),
                "Fval" => Some(s(val, "fval").to_owned()),
                "Boolval" => Some(b(val, "boolval").to_string()),
                "BitString" => Some(s(val, "bsval").to_owned()),
                _ => None,
            }
        }
        "TypeCast" => literal(m.get("arg")?),
        // DefElem arguments (`EXPLAIN (ANALYZE false)`).
        "Boolean" => Some(b(m, "boolval").to_string()),
        "String" => Some(s(m, "sval").to_owned()),
        "Integer" => Some(i(m, "ival").to_string()),
        _ => None,
    }
}

fn truthy(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "on" | "1" | "yes" | "t" | "y" => Some(true),
        "false" | "off" | "0" | "no" | "f" | "n" => Some(false),
        _ => None,
    }
}

/// What the deep walk found.
#[derive(Default)]
struct Facts {
    /// With the location of their mention (text order), for a stable order.
    relations: Vec<(i64, Relation)>,
    /// Position of each relation in `relations` (dedup without a quadratic scan).
    relation_index: HashMap<Relation, usize>,
    function_set: HashSet<String>,
    functions: Vec<String>,
    session: Vec<SessionEffect>,
    writes: bool,
    opaque: bool,
}

/// Walks a statement, keeping the CTE names in scope so that a CTE reference
/// is not reported as a relation, but a real table of the same name elsewhere is.
struct Walker {
    scope: Vec<String>,
    facts: Facts,
}

/// Fields whose relation is the statement's write target.
const TARGET_FIELDS: &[&str] = &["relation", "relations", "view", "sequence", "into", "into_clause", "rel"];

/// Nodes whose `TARGET_FIELDS` hold the relation they change.
fn targets_relation(node: &str) -> bool {
    !matches!(node, "SelectStmt" | "LockStmt") && (node.ends_with("Stmt") || node == "IntoClause")
}

impl Walker {
    fn new() -> Self {
        Self { scope: Vec::new(), facts: Facts::default() }
    }

    fn value(&mut self, v: &Value, target: bool) {
        match v {
            Value::Array(items) => items.iter().for_each(|x| self.value(x, target)),
            Value::Object(m) => {
                if let Some((name, body)) = node(v) {
                    self.node(name, body, target);
                } else if m.contains_key("relname") && m.contains_key("relpersistence") {
                    self.range_var(m, target);
                } else if m.contains_key("funcname") && m.contains_key("agg_star") {
                    // A bare FuncCall (`CALL`'s `funccall`).
                    self.node("FuncCall", m, false);
                } else if m.contains_key("rel") && m.contains_key("on_commit") {
                    // A bare IntoClause (`SELECT … INTO`, `CREATE TABLE … AS`).
                    self.visit_into_clause(m);
                } else {
                    self.fields("", m, target);
                }
            }
            _ => {}
        }
    }

    fn fields(&mut self, node: &str, m: &Map<String, Value>, target: bool) {
        let scope_len = self.scope.len();
        if let Some(with) = m.get("with_clause").and_then(Value::as_object) {
            self.with_clause(with);
        }
        for (k, v) in m {
            if k == "with_clause" {
                continue;
            }
            let t =
                if targets_relation(node) { TARGET_FIELDS.contains(&k.as_str()) } else { target && node.is_empty() };
            self.value(v, t);
        }
        self.scope.truncate(scope_len);
    }

    /// Visit the CTE bodies with the names each may see, then leave every
    /// name of the clause in scope for the rest of the statement.
    fn with_clause(&mut self, with: &Map<String, Value>) {
        let ctes: Vec<(&str, &Map<String, Value>)> = with
            .get("ctes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| match node(c) {
                Some(("CommonTableExpr", m)) => Some((s(m, "ctename"), m)),
                _ => None,
            })
            .collect();
        if b(with, "recursive") {
            self.scope.extend(ctes.iter().map(|(n, _)| (*n).to_owned()));
            for (_, m) in &ctes {
                self.fields("CommonTableExpr", m, false);
            }
        } else {
            for (name, m) in &ctes {
                self.fields("CommonTableExpr", m, false);
                self.scope.push((*name).to_owned());
            }
        }
    }

    fn node(&mut self, name: &str, m: &Map<String, Value>, target: bool) {
        match name {
            "RangeVar" => self.range_var(m, target),
            "FuncCall" => {
                self.func_call(m);
                self.fields(name, m, false);
            }
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                self.facts.writes = true;
                self.fields(name, m, false);
            }
            "SelectStmt" => {
                if m.get("locking_clause").and_then(Value::as_array).is_some_and(|l| !l.is_empty()) {
                    self.facts.writes = true;
                }
                self.fields(name, m, false);
            }
            "DoStmt" | "CallStmt" | "ExecuteStmt" => {
                self.facts.opaque = true;
                self.facts.writes = true;
                self.fields(name, m, false);
            }
            "CopyStmt" => {
                let is_from = b(m, "is_from");
                for (k, v) in m {
                    self.value(v, is_from && k == "relation");
                }
            }
            // DROP names its objects as lists of strings, not RangeVars.
            "DropStmt" => {
                let ty = ObjectType::try_from(i(m, "remove_type") as i32).unwrap_or(ObjectType::Undefined);
                if matches!(
                    ty,
                    ObjectType::ObjectTable
                        | ObjectType::ObjectView
                        | ObjectType::ObjectMatview
                        | ObjectType::ObjectSequence
                        | ObjectType::ObjectIndex
                        | ObjectType::ObjectForeignTable
                ) {
                    for o in m.get("objects").and_then(Value::as_array).into_iter().flatten() {
                        if let Some(("List", l)) = node(o) {
                            let full = dotted(l.get("items"));
                            self.relation_named(&full, Access::Write);
                        }
                    }
                }
                self.fields(name, m, false);
            }
            _ => self.fields(name, m, target),
        }
    }

    fn visit_into_clause(&mut self, m: &Map<String, Value>) {
        self.facts.writes = true;
        self.fields("IntoClause", m, true);
    }

    fn range_var(&mut self, m: &Map<String, Value>, target: bool) {
        let schema = s(m, "schemaname");
        let name = s(m, "relname");
        // A CTE name never resolves a write target: INSERT/UPDATE/DELETE/MERGE
        // and SELECT INTO always open the real table.
        if !target && schema.is_empty() && self.scope.iter().any(|c| c == name) {
            return;
        }
        if target && (s(m, "relpersistence") == "t" || schema == "pg_temp") {
            self.facts.session.push(SessionEffect::TempObject);
        }
        let r = Relation {
            schema: (!schema.is_empty()).then(|| schema.to_owned()),
            name: name.to_owned(),
            access: if target { Access::Write } else { Access::Read },
        };
        self.push_relation(i(m, "location"), r);
    }

    fn relation_named(&mut self, dotted: &str, access: Access) {
        let (schema, name) = match dotted.rsplit_once('.') {
            Some((s, n)) => (Some(s.to_owned()), n.to_owned()),
            None => (None, dotted.to_owned()),
        };
        // Names without a location keep their order after every located one.
        let at = i64::MAX / 2 + self.facts.relations.len() as i64;
        self.push_relation(at, Relation { schema, name, access });
    }

    fn push_relation(&mut self, location: i64, r: Relation) {
        if r.access == Access::Write {
            self.facts.writes = true;
        }
        match self.facts.relation_index.get(&r) {
            Some(&i) => self.facts.relations[i].0 = self.facts.relations[i].0.min(location),
            None => {
                self.facts.relation_index.insert(r.clone(), self.facts.relations.len());
                self.facts.relations.push((location, r));
            }
        }
    }

    fn func_call(&mut self, m: &Map<String, Value>) {
        let full = dotted(m.get("funcname"));
        let (schema, bare) = match full.rsplit_once('.') {
            Some((s, n)) => (Some(s), n),
            None => (None, full.as_str()),
        };
        let catalog = matches!(schema, None | Some("pg_catalog"));
        if !(catalog && builtins::is_builtin(bare)) || SQL_RUNNING_FUNCTIONS.contains(&bare) {
            self.facts.opaque = true;
            self.facts.writes = true;
        }
        if catalog {
            if WRITING_FUNCTIONS.contains(&bare) {
                self.facts.writes = true;
            }
            let args: Vec<&Value> = m.get("args").and_then(Value::as_array).into_iter().flatten().collect();
            if bare == "set_config" {
                self.facts.session.push(SessionEffect::SetConfig {
                    name: args.first().and_then(|a| literal(a)).map(|n| n.to_ascii_lowercase()),
                    value: args.get(1).and_then(|a| literal(a)),
                    local: args.get(2).and_then(|a| literal(a)).and_then(|v| truthy(&v)),
                });
            } else if ADVISORY_LOCKS.contains(&bare) {
                self.facts.session.push(SessionEffect::AdvisoryLock);
            } else if ADVISORY_UNLOCKS.contains(&bare) {
                self.facts.session.push(SessionEffect::AdvisoryUnlock);
            }
        }
        if self.facts.function_set.insert(full.clone()) {
            self.facts.functions.push(full);
        }
    }
}

/// The model of one raw statement (`stmt` of a `RawStmt`) whose text is `text`.
pub fn statement(stmt: &Value, text: &str, offset: usize) -> Statement {
    let mut st = Statement {
        text: text.to_owned(),
        offset,
        kind: Kind::Utility,
        transaction: None,
        ddl: None,
        explain: None,
        copy_server_side: false,
        writes: false,
        relations: Vec::new(),
        functions: Vec::new(),
        opaque: false,
        session: Vec::new(),
        executes: None,
        read_only: false,
    };
    let Some((name, m)) = node(stmt) else { return st };
    classify(&mut st, name, m);
    let mut w = Walker::new();
    w.node(name, m, false);
    merge(&mut st, w.facts);
    if on_commit_drop(name, m) {
        st.session.retain(|e| *e != SessionEffect::TempObject);
    }
    st
}

/// Add the walk's facts. A plain `EXPLAIN` plans its statement without
/// running it: its writes and session effects do not happen (planning may
/// still evaluate immutable functions, so `opaque` stays).
fn merge(st: &mut Statement, f: Facts) {
    st.opaque |= f.opaque;
    let mut relations = f.relations;
    relations.sort_by_key(|(at, _)| *at);
    st.relations = relations.into_iter().map(|(_, r)| r).collect();
    st.functions = f.functions;
    if matches!(st.explain, Some(Explain { analyze: false, .. })) {
        return;
    }
    st.writes |= f.writes;
    for e in f.session {
        if !st.session.contains(&e) {
            st.session.push(e);
        }
    }
}

/// Top-level facts: kind, transaction control, DDL, EXPLAIN, session effects.
fn classify(st: &mut Statement, name: &str, m: &Map<String, Value>) {
    st.kind = match name {
        "SelectStmt" => {
            if present(m, "into_clause") {
                st.ddl = Some(ddl("create", "table"));
            }
            Kind::Select
        }
        "InsertStmt" => Kind::Insert,
        "UpdateStmt" => Kind::Update,
        "DeleteStmt" => Kind::Delete,
        "MergeStmt" => Kind::Merge,
        "CopyStmt" => {
            st.copy_server_side = b(m, "is_program") || !s(m, "filename").is_empty();
            if b(m, "is_from") { Kind::CopyFrom } else { Kind::CopyTo }
        }
        "TransactionStmt" => {
            let k = TransactionStmtKind::try_from(i(m, "kind") as i32).unwrap_or(TransactionStmtKind::Undefined);
            st.transaction = Some(match k {
                TransactionStmtKind::TransStmtCommit => TxControl::Commit,
                TransactionStmtKind::TransStmtRollback => TxControl::Rollback,
                TransactionStmtKind::TransStmtSavepoint => TxControl::Savepoint,
                TransactionStmtKind::TransStmtRelease => TxControl::Release,
                TransactionStmtKind::TransStmtRollbackTo => TxControl::RollbackTo,
                TransactionStmtKind::TransStmtPrepare
                | TransactionStmtKind::TransStmtCommitPrepared
                | TransactionStmtKind::TransStmtRollbackPrepared => TxControl::TwoPhase,
                _ => TxControl::Begin,
            });
            if st.transaction == Some(TxControl::Begin) {
                st.read_only = m.get("options").and_then(Value::as_array).into_iter().flatten().any(|o| {
                    matches!(node(o), Some(("DefElem", d)) if s(d, "defname") == "transaction_read_only"
                        && d.get("arg").and_then(literal).and_then(|v| truthy(&v)).unwrap_or(false))
                });
            }
            Kind::Transaction
        }
        "VariableSetStmt" => variable_set(st, m),
        "VariableShowStmt" => Kind::Show,
        "DiscardStmt" => {
            let target = match DiscardMode::try_from(i(m, "target") as i32) {
                Ok(DiscardMode::DiscardPlans) => DiscardTarget::Plans,
                Ok(DiscardMode::DiscardSequences) => DiscardTarget::Sequences,
                Ok(DiscardMode::DiscardTemp) => DiscardTarget::Temp,
                _ => DiscardTarget::All,
            };
            st.session.push(SessionEffect::Discard(target));
            Kind::Discard
        }
        "ListenStmt" => {
            st.session.push(SessionEffect::Listen { channel: s(m, "conditionname").to_owned() });
            Kind::Listen
        }
        "UnlistenStmt" => {
            let c = s(m, "conditionname");
            st.session.push(SessionEffect::Unlisten { channel: (!c.is_empty()).then(|| c.to_owned()) });
            Kind::Unlisten
        }
        "NotifyStmt" => {
            st.writes = true;
            Kind::Notify
        }
        "DoStmt" => Kind::Do,
        "CallStmt" => Kind::Call,
        "ExplainStmt" => {
            let analyze = m.get("options").and_then(Value::as_array).into_iter().flatten().any(|o| match node(o) {
                Some(("DefElem", d)) if s(d, "defname") == "analyze" => match d.get("arg") {
                    None | Some(Value::Null) => true,
                    Some(a) => literal(a).and_then(|v| truthy(&v)).unwrap_or(true),
                },
                _ => false,
            });
            let inner = m.get("query").map(|q| statement(q, &st.text, st.offset));
            if let Some(inner) = inner {
                st.explain = Some(Explain { analyze, inner: inner.kind });
                if analyze {
                    st.ddl = inner.ddl;
                    st.writes = inner.writes;
                    st.session = inner.session;
                    st.transaction = inner.transaction;
                }
            }
            Kind::Explain
        }
        "PrepareStmt" => {
            st.session.push(SessionEffect::Prepare { name: s(m, "name").to_owned() });
            Kind::Prepare
        }
        "ExecuteStmt" => {
            st.executes = Some(s(m, "name").to_owned());
            Kind::Execute
        }
        "DeallocateStmt" => {
            let n = s(m, "name");
            let name = (!b(m, "isall") && !n.is_empty()).then(|| n.to_owned());
            st.session.push(SessionEffect::Deallocate { name });
            Kind::Deallocate
        }
        "DeclareCursorStmt" => {
            if i(m, "options") & CURSOR_OPT_HOLD != 0 {
                st.session.push(SessionEffect::HoldCursor);
            }
            Kind::Cursor
        }
        "FetchStmt" | "ClosePortalStmt" => Kind::Cursor,
        "LockStmt" => {
            st.writes = true;
            Kind::Lock
        }
        "VacuumStmt" | "ClusterStmt" | "ReindexStmt" | "RefreshMatViewStmt" | "CheckPointStmt" => {
            st.writes = true;
            Kind::Maintenance
        }
        "LoadStmt" => {
            st.session.push(SessionEffect::Load);
            Kind::Utility
        }
        "TruncateStmt" => {
            st.writes = true;
            Kind::Truncate
        }
        other => match ddl_of(other, m) {
            Some(d) => {
                st.ddl = Some(d);
                st.writes = true;
                Kind::Ddl
            }
            None => Kind::Utility,
        },
    };
}

/// `CREATE TEMP TABLE … ON COMMIT DROP` (and the `AS`/`INTO` forms): the
/// temporary table does not outlive the transaction.
fn on_commit_drop(name: &str, m: &Map<String, Value>) -> bool {
    match name {
        "CreateStmt" => m.get("oncommit"),
        "CreateTableAsStmt" => m.get("into").and_then(|v| v.get("on_commit")),
        "SelectStmt" => m.get("into_clause").and_then(|v| v.get("on_commit")),
        _ => None,
    }
    .and_then(Value::as_i64)
    .is_some_and(|v| v == OnCommitAction::OncommitDrop as i64)
}

fn variable_set(st: &mut Statement, m: &Map<String, Value>) -> Kind {
    let name = s(m, "name").to_ascii_lowercase();
    let local = b(m, "is_local");
    let args: Vec<&Value> = m.get("args").and_then(Value::as_array).into_iter().flatten().collect();
    match VariableSetKind::try_from(i(m, "kind") as i32).unwrap_or(VariableSetKind::Undefined) {
        VariableSetKind::VarReset => {
            st.session.push(SessionEffect::Reset { name: Some(name) });
            Kind::Reset
        }
        VariableSetKind::VarResetAll => {
            st.session.push(SessionEffect::Reset { name: None });
            Kind::Reset
        }
        VariableSetKind::VarSetMulti if name == "session characteristics" => {
            st.session.push(SessionEffect::SessionCharacteristics);
            Kind::Set
        }
        // SET TRANSACTION …: lasts for the transaction only.
        VariableSetKind::VarSetMulti => Kind::Set,
        kind => {
            let value = match (kind, args.as_slice()) {
                (VariableSetKind::VarSetValue, [one]) => literal(one),
                _ => None,
            };
            st.session.push(SessionEffect::Set { name, local, value });
            Kind::Set
        }
    }
}

fn ddl(action: &str, object: &str) -> Ddl {
    Ddl { action: action.to_owned(), object: object.to_owned() }
}

/// `OBJECT_MATVIEW` → `materialized view`.
fn object_name(v: i64) -> Option<String> {
    let t = ObjectType::try_from(v as i32).ok()?;
    let n = t.as_str_name().strip_prefix("OBJECT_")?;
    Some(match n {
        "MATVIEW" => "materialized view".to_owned(),
        "TSCONFIGURATION" => "text search configuration".to_owned(),
        "TSDICTIONARY" => "text search dictionary".to_owned(),
        "TSPARSER" => "text search parser".to_owned(),
        "TSTEMPLATE" => "text search template".to_owned(),
        "FDW" => "foreign data wrapper".to_owned(),
        "OPCLASS" => "operator class".to_owned(),
        "OPFAMILY" => "operator family".to_owned(),
        "ROUTINE" | "FUNCTION" | "PROCEDURE" | "AGGREGATE" => n.to_ascii_lowercase(),
        other => other.to_ascii_lowercase().replace('_', " "),
    })
}

/// The DDL description of a utility node, or `None` when it is not DDL.
fn ddl_of(name: &str, m: &Map<String, Value>) -> Option<Ddl> {
    let typed = ["objtype", "remove_type", "rename_type", "object_type", "kind"]
        .iter()
        .find_map(|k| m.get(*k).and_then(Value::as_i64).filter(|v| *v > 0).and_then(object_name));
    let fixed = |action: &str, object: &str| Some(ddl(action, object));
    match name {
        "CreateStmt" => fixed("create", "table"),
        "CreateTableAsStmt" => Some(ddl("create", typed.as_deref().unwrap_or("table"))),
        "ViewStmt" => fixed("create", "view"),
        "IndexStmt" => fixed("create", "index"),
        "CreateSeqStmt" => fixed("create", "sequence"),
        "AlterSeqStmt" => fixed("alter", "sequence"),
        "CreateFunctionStmt" => fixed("create", if b(m, "is_procedure") { "procedure" } else { "function" }),
        "AlterFunctionStmt" => fixed("alter", "function"),
        "CreateSchemaStmt" => fixed("create", "schema"),
        "CreateExtensionStmt" => fixed("create", "extension"),
        "AlterExtensionStmt" | "AlterExtensionContentsStmt" => fixed("alter", "extension"),
        "CreateTrigStmt" => fixed("create", "trigger"),
        "CreateEventTrigStmt" => fixed("create", "event trigger"),
        "AlterEventTrigStmt" => fixed("alter", "event trigger"),
        "RuleStmt" => fixed("create", "rule"),
        "CreatedbStmt" => fixed("create", "database"),
        "DropdbStmt" => fixed("drop", "database"),
        "AlterDatabaseStmt" | "AlterDatabaseSetStmt" | "AlterDatabaseRefreshCollStmt" => fixed("alter", "database"),
        "CreateRoleStmt" => fixed("create", "role"),
        "AlterRoleStmt" | "AlterRoleSetStmt" => fixed("alter", "role"),
        "DropRoleStmt" => fixed("drop", "role"),
        "GrantRoleStmt" => fixed(if b(m, "is_grant") { "grant" } else { "revoke" }, "role"),
        "GrantStmt" => Some(ddl(if b(m, "is_grant") { "grant" } else { "revoke" }, typed.as_deref().unwrap_or(""))),
        "CreateTableSpaceStmt" => fixed("create", "tablespace"),
        "DropTableSpaceStmt" => fixed("drop", "tablespace"),
        "AlterTableSpaceOptionsStmt" | "AlterTableMoveAllStmt" => fixed("alter", "tablespace"),
        "AlterSystemStmt" => fixed("alter", "system"),
        "CreateDomainStmt" => fixed("create", "domain"),
        "AlterDomainStmt" => fixed("alter", "domain"),
        "CompositeTypeStmt" | "CreateEnumStmt" | "CreateRangeStmt" => fixed("create", "type"),
        "AlterEnumStmt" | "AlterTypeStmt" => fixed("alter", "type"),
        "CreatePolicyStmt" => fixed("create", "policy"),
        "AlterPolicyStmt" => fixed("alter", "policy"),
        "CreatePublicationStmt" => fixed("create", "publication"),
        "AlterPublicationStmt" => fixed("alter", "publication"),
        "CreateSubscriptionStmt" => fixed("create", "subscription"),
        "AlterSubscriptionStmt" => fixed("alter", "subscription"),
        "DropSubscriptionStmt" => fixed("drop", "subscription"),
        "CreateFdwStmt" => fixed("create", "foreign data wrapper"),
        "AlterFdwStmt" => fixed("alter", "foreign data wrapper"),
        "CreateForeignServerStmt" => fixed("create", "server"),
        "AlterForeignServerStmt" => fixed("alter", "server"),
        "CreateForeignTableStmt" => fixed("create", "foreign table"),
        "CreateUserMappingStmt" => fixed("create", "user mapping"),
        "AlterUserMappingStmt" => fixed("alter", "user mapping"),
        "DropUserMappingStmt" => fixed("drop", "user mapping"),
        "ImportForeignSchemaStmt" => fixed("import", "foreign schema"),
        "CreateCastStmt" => fixed("create", "cast"),
        "CreateOpClassStmt" => fixed("create", "operator class"),
        "CreateOpFamilyStmt" => fixed("create", "operator family"),
        "AlterOpFamilyStmt" => fixed("alter", "operator family"),
        "AlterOperatorStmt" => fixed("alter", "operator"),
        "CreateConversionStmt" => fixed("create", "conversion"),
        "CreatePLangStmt" => fixed("create", "language"),
        "CreateStatsStmt" => fixed("create", "statistics"),
        "AlterStatsStmt" => fixed("alter", "statistics"),
        "CreateTransformStmt" => fixed("create", "transform"),
        "CreateAmStmt" => fixed("create", "access method"),
        "AlterDefaultPrivilegesStmt" => fixed("alter", "default privileges"),
        "AlterCollationStmt" => fixed("alter", "collation"),
        "AlterTSDictionaryStmt" => fixed("alter", "text search dictionary"),
        "AlterTSConfigurationStmt" => fixed("alter", "text search configuration"),
        "ReassignOwnedStmt" => fixed("alter", "owned"),
        "DropOwnedStmt" => fixed("drop", "owned"),
        "SecLabelStmt" => Some(ddl("security-label", typed.as_deref().unwrap_or(""))),
        "CommentStmt" => Some(ddl("comment", typed.as_deref().unwrap_or(""))),
        "DefineStmt" => Some(ddl("create", typed.as_deref().unwrap_or(""))),
        "DropStmt" => Some(ddl("drop", typed.as_deref().unwrap_or(""))),
        "AlterTableStmt" | "RenameStmt" | "AlterObjectSchemaStmt" | "AlterOwnerStmt" | "AlterObjectDependsStmt" => {
            Some(ddl("alter", typed.as_deref().unwrap_or("")))
        }
        n if n.starts_with("Create") || n.starts_with("Alter") || n.starts_with("Drop") => {
            let (action, rest) = if let Some(r) = n.strip_prefix("Create") {
                ("create", r)
            } else if let Some(r) = n.strip_prefix("Alter") {
                ("alter", r)
            } else {
                ("drop", n.trim_start_matches("Drop"))
            };
            Some(ddl(action, &camel_to_words(rest.trim_end_matches("Stmt"))))
        }
        _ => None,
    }
}

fn camel_to_words(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}
