//! `sluice:plugin/sql`: the statement model as the policy world's input. The
//! interface has no functions; this is the conversion from
//! [`crate::sql::Statement`] to its WIT record.

use crate::plugins::bindings::sql::{
    self as wit, Access, Ddl, Explain, Relation, SessionEffect as WitEffect, SetConfig, Setting, StatementKind,
    TransactionKind,
};
use crate::sql::statement::{self as model, Kind, SessionEffect, TxControl};

impl wit::Host for super::HostState {}

fn kind(k: Kind) -> StatementKind {
    match k {
        Kind::Select => StatementKind::Select,
        Kind::Insert => StatementKind::Insert,
        Kind::Update => StatementKind::Update,
        Kind::Delete => StatementKind::Delete,
        Kind::Merge => StatementKind::Merge,
        Kind::CopyTo => StatementKind::CopyTo,
        Kind::CopyFrom => StatementKind::CopyFrom,
        Kind::Ddl => StatementKind::Ddl,
        Kind::Truncate => StatementKind::Truncate,
        Kind::Transaction => StatementKind::Transaction,
        Kind::Set => StatementKind::Set,
        Kind::Reset => StatementKind::Reset,
        Kind::Show => StatementKind::Show,
        Kind::Discard => StatementKind::Discard,
        Kind::Listen => StatementKind::Listen,
        Kind::Unlisten => StatementKind::Unlisten,
        Kind::Notify => StatementKind::Notify,
        Kind::Do => StatementKind::Do,
        Kind::Call => StatementKind::Call,
        Kind::Explain => StatementKind::Explain,
        Kind::Prepare => StatementKind::Prepare,
        Kind::Execute => StatementKind::Execute,
        Kind::Deallocate => StatementKind::Deallocate,
        Kind::Cursor => StatementKind::Cursor,
        Kind::Lock => StatementKind::Lock,
        Kind::Maintenance => StatementKind::Maintenance,
        Kind::Utility => StatementKind::Utility,
    }
}

fn transaction(t: TxControl) -> TransactionKind {
    match t {
        TxControl::Begin => TransactionKind::Begin,
        TxControl::Commit => TransactionKind::Commit,
        TxControl::Rollback => TransactionKind::Rollback,
        TxControl::Savepoint => TransactionKind::Savepoint,
        TxControl::Release => TransactionKind::Release,
        TxControl::RollbackTo => TransactionKind::RollbackTo,
        TxControl::TwoPhase => TransactionKind::TwoPhase,
    }
}

fn effect(e: &SessionEffect) -> WitEffect {
    match e {
        SessionEffect::Set { name, local, value } => {
            WitEffect::Set(Setting { name: name.clone(), local: *local, value: value.clone() })
        }
        SessionEffect::SetConfig { name, value, local } => {
            WitEffect::SetConfig(SetConfig { name: name.clone(), value: value.clone(), local: *local })
        }
        SessionEffect::Reset { name } => WitEffect::Reset(name.clone()),
        SessionEffect::SessionCharacteristics => WitEffect::SessionCharacteristics,
        SessionEffect::Discard(t) => WitEffect::Discard(
            match t {
                model::DiscardTarget::All => "all",
                model::DiscardTarget::Plans => "plans",
                model::DiscardTarget::Sequences => "sequences",
                model::DiscardTarget::Temp => "temp",
            }
            .to_owned(),
        ),
        SessionEffect::Listen { channel } => WitEffect::Listen(channel.clone()),
        SessionEffect::Unlisten { channel } => WitEffect::Unlisten(channel.clone()),
        SessionEffect::TempObject => WitEffect::TempObject,
        SessionEffect::Prepare { name } => WitEffect::Prepare(name.clone()),
        SessionEffect::Deallocate { name } => WitEffect::Deallocate(name.clone()),
        SessionEffect::HoldCursor => WitEffect::HoldCursor,
        SessionEffect::Load => WitEffect::Load,
        SessionEffect::AdvisoryLock => WitEffect::AdvisoryLock,
        SessionEffect::AdvisoryUnlock => WitEffect::AdvisoryUnlock,
    }
}

/// The WIT record of one statement.
pub fn statement(st: &model::Statement) -> wit::Statement {
    wit::Statement {
        text: st.text.clone(),
        kind: kind(st.kind),
        transaction: st.transaction.map(transaction),
        ddl: st.ddl.as_ref().map(|d| Ddl { action: d.action.clone(), object: d.object.clone() }),
        explain: st.explain.map(|e| Explain { analyze: e.analyze, inner: kind(e.inner) }),
        writes: st.writes,
        copy_server_side: st.copy_server_side,
        relations: st
            .relations
            .iter()
            .map(|r| Relation {
                schema: r.schema.clone(),
                name: r.name.clone(),
                access: match r.access {
                    model::Access::Read => Access::Read,
                    model::Access::Write => Access::Write,
                },
            })
            .collect(),
        functions: st.functions.clone(),
        opaque: st.opaque,
        session: st.session.iter().map(effect).collect(),
    }
}
