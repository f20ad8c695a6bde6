//! SCRAM-SHA-256 (RFC 5802/7677) server side of the Postgres door: the user
//! is the tenant name and the password is one of the tenant's API keys.
//!
//! All keys of a tenant share the tenant's salt, so after the client-first
//! message the door sends that salt and, on client-final, checks the proof
//! against every active key's StoredKey (no early exit). A name that is not an
//! active tenant gets a deterministic fake salt and fails at proof time with
//! the same FATAL 28P01 as a wrong key, so the answer does not reveal whether
//! the tenant exists. Nor does its timing: the mechanism list goes before the
//! lookup, which is the same single query for every name and runs while the
//! client answers, and the salt goes at a fixed floor after the start. A
//! suspended tenant is told so only after a right proof. Channel binding is
//! not offered.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};

use super::client::ClientConn;
use super::messages::auth::{
    SCRAM_SHA_256, decode_sasl_initial, encode_auth_ok, encode_sasl_mechanisms, encode_sasl_step,
};
use super::messages::error::PgError;
use super::messages::{FrontendMessage, MAX_AUTH_MESSAGE_LEN, decode};
use crate::control::credentials::{fake_scram_salt, scram_proof_matches, scram_server_signature};
use crate::control::keys::{self, ScramVerifier};
use crate::control::{ControlError, quotas};
use crate::ids::TenantName;
use crate::pipeline::auth::Principal;
use crate::services::Services;

/// The server-first message (with the salt) is sent no earlier than this
/// after the login started: the lookup (about 0.3 ms; longer for a tenant with
/// keys, whose rows it decodes) ends well inside it, so when the salt goes
/// does not depend on the name. (tokio's timer rounds up to the next
/// millisecond tick, alike for every name.)
const SERVER_FIRST_FLOOR: std::time::Duration = std::time::Duration::from_millis(2);

/// What the door knows about the user before the proof.
struct Candidate {
    salt: Vec<u8>,
    iterations: u32,
    verifiers: Vec<ScramVerifier>,
    /// `None` for a name that is no tenant the door serves.
    principal: Option<Known>,
}

struct Known {
    tenant_id: crate::ids::TenantId,
    tenant: TenantName,
    quotas: quotas::Quotas,
    usage: crate::usage::Usage,
    db: crate::control::tenants::TenantDb,
    /// Why it is suspended: told only to a client whose proof is right.
    suspended: Option<String>,
    /// Why it is fenced (a restore in progress), likewise.
    fenced: Option<String>,
}

/// One control-plane query whatever `user` is (valid tenant, unknown name,
/// not even a valid name), so the time to the server's first SCRAM message
/// does not tell them apart.
async fn candidate(svc: &Services, user: &str) -> Result<Candidate, ControlError> {
    let found = keys::login_candidate(&svc.control.client().await?, user).await?;
    let parsed = TenantName::parse(user).ok();
    let served = found.filter(|f| f.active || f.suspended.is_some());
    match (served, parsed) {
        (Some(f), Some(tenant)) => Ok(Candidate {
            salt: f.scram_salt,
            iterations: f.scram_iterations,
            verifiers: f.verifiers,
            principal: Some(Known {
                tenant_id: f.tenant_id,
                tenant,
                quotas: f.quotas,
                usage: f.usage,
                db: f.db,
                suspended: f.suspended,
                fenced: f.fenced,
            }),
        }),
        _ => Ok(Candidate {
            salt: fake_scram_salt(&svc.config.auth.master_key, user),
            iterations: svc.config.auth.scram_iterations,
            verifiers: Vec::new(),
            principal: None,
        }),
    }
}

/// One `name=value` attribute of a SCRAM message.
fn attr<'a>(parts: &[&'a str], name: char) -> Option<&'a str> {
    parts.iter().find_map(|p| p.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

/// The parts of a client-first message.
#[derive(Debug, PartialEq, Eq)]
struct ClientFirst<'a> {
    gs2_header: &'a str,
    bare: &'a str,
    nonce: &'a str,
}

fn parse_client_first(msg: &str) -> Result<ClientFirst<'_>, &'static str> {
    let mut it = msg.splitn(3, ',');
    let cbind = it.next().ok_or("empty message")?;
    let authzid = it.next().ok_or("missing gs2 header")?;
    let bare = it.next().ok_or("missing client-first-bare")?;
    match cbind {
        "n" | "y" => {}
        c if c.starts_with("p=") => return Err("channel binding is not supported"),
        _ => return Err("bad gs2 header"),
    }
    if !authzid.is_empty() && !authzid.starts_with("a=") {
        return Err("bad gs2 header");
    }
    let gs2_header = &msg[..cbind.len() + authzid.len() + 2];
    let parts: Vec<&str> = bare.split(',').collect();
    if parts.first().is_some_and(|p| p.starts_with("m=")) {
        return Err("SCRAM extensions are not supported");
    }
    let nonce = attr(&parts, 'r').ok_or("missing nonce")?;
    if nonce.is_empty() || !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
        return Err("bad nonce");
    }
    Ok(ClientFirst { gs2_header, bare, nonce })
}

/// Read one `p` message during authentication.
async fn read_password<S: AsyncRead + AsyncWrite + Unpin>(client: &mut ClientConn<S>) -> Result<Vec<u8>, PgError> {
    let frame = client.read_frame(MAX_AUTH_MESSAGE_LEN).await.map_err(|e| PgError::protocol(e.to_string()))?;
    let Some((tag, body)) = frame else { return Err(PgError::protocol("client closed during authentication")) };
    match decode(tag, &body) {
        Ok(FrontendMessage::Password(data)) => Ok(data.to_vec()),
        Ok(_) => Err(PgError::protocol("expected a password (SASL) message")),
        Err(e) => Err(PgError::protocol(e.to_string())),
    }
}

/// Run the SCRAM exchange for `user`; on success the client has been sent
/// AuthenticationOk and the principal is returned.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientConn<S>,
    svc: &Services,
    user: &str,
) -> Result<Principal, PgError> {
    // The mechanism list does not depend on the user: it goes at once, and
    // the lookup runs while the client answers. The salt (real or fake) goes
    // no earlier than SERVER_FIRST_FLOOR after the start, so neither reply's
    // timing tells an existing tenant from an unknown or invalid name.
    let floor = tokio::time::Instant::now() + SERVER_FIRST_FLOOR;
    encode_sasl_mechanisms(&mut client.wbuf);
    client.flush().await.map_err(|e| PgError::protocol(e.to_string()))?;
    let (initial, cand) = tokio::join!(read_password(client), candidate(svc, user));
    let initial = initial?;
    let cand = cand.map_err(|e| {
        tracing::warn!(error = %e, "look up tenant for pg login");
        PgError::fatal("57P03", "the gateway cannot authenticate now; retry later")
    })?;
    tokio::time::sleep_until(floor).await;
    let initial = decode_sasl_initial(&initial).map_err(|e| PgError::protocol(e.to_string()))?;
    if initial.mechanism != SCRAM_SHA_256 {
        return Err(PgError::fatal("28000", "only SCRAM-SHA-256 authentication is supported"));
    }
    let first = std::str::from_utf8(initial.data).map_err(|_| PgError::protocol("SCRAM message is not UTF-8"))?;
    let first = parse_client_first(first).map_err(|m| PgError::fatal("28000", format!("SCRAM: {m}")))?;

    let mut server_nonce = [0u8; 18];
    rand::rng().fill(&mut server_nonce[..]);
    let nonce = format!("{}{}", first.nonce, STANDARD.encode(server_nonce));
    let server_first = format!("r={nonce},s={},i={}", STANDARD.encode(&cand.salt), cand.iterations);
    encode_sasl_step(&mut client.wbuf, 11, server_first.as_bytes());
    client.flush().await.map_err(|e| PgError::protocol(e.to_string()))?;

    let final_msg = read_password(client).await?;
    let final_msg = std::str::from_utf8(&final_msg).map_err(|_| PgError::protocol("SCRAM message is not UTF-8"))?;
    let (without_proof, proof) =
        final_msg.rsplit_once(",p=").ok_or_else(|| PgError::fatal("28000", "SCRAM: missing proof"))?;
    let parts: Vec<&str> = without_proof.split(',').collect();
    let binding_ok =
        attr(&parts, 'c').and_then(|c| STANDARD.decode(c).ok()).is_some_and(|c| c == first.gs2_header.as_bytes());
    let nonce_ok = attr(&parts, 'r') == Some(nonce.as_str());
    if !binding_ok || !nonce_ok {
        return Err(PgError::fatal("28000", "SCRAM: channel binding or nonce mismatch"));
    }
    let proof = STANDARD.decode(proof).unwrap_or_default();
    let auth_message = format!("{},{server_first},{without_proof}", first.bare);

    let mut matched: Option<&ScramVerifier> = None;
    for v in &cand.verifiers {
        if scram_proof_matches(&v.stored_key, auth_message.as_bytes(), &proof) && matched.is_none() {
            matched = Some(v);
        }
    }
    if cand.verifiers.is_empty() {
        // The same work as one real check, so the reply's timing does not
        // tell a name without keys from one with a wrong key.
        let _ = scram_proof_matches(&[0u8; 32], auth_message.as_bytes(), &proof);
    }
    let (Some(key), Some(known)) = (matched, cand.principal) else {
        metrics::counter!("sluice_pg_auth_failures_total").increment(1);
        return Err(PgError::auth_failed(user));
    };
    if let Some(reason) = known.suspended {
        let why = if reason.is_empty() { String::new() } else { format!(": {reason}") };
        return Err(PgError::fatal("28000", format!("tenant \"{user}\" is suspended by the operator{why}")));
    }
    if let Some(reason) = known.fenced {
        return Err(PgError::fatal(crate::backup::fence::SQLSTATE, crate::backup::fence::message(&reason)));
    }
    let sig = scram_server_signature(&key.server_key, auth_message.as_bytes());
    encode_sasl_step(&mut client.wbuf, 12, format!("v={}", STANDARD.encode(sig)).as_bytes());
    encode_auth_ok(&mut client.wbuf);
    Ok(Principal {
        tenant_id: known.tenant_id,
        tenant: known.tenant,
        key_id: key.id,
        key_prefix: key.prefix.clone(),
        role: key.role,
        quotas: known.quotas,
        key_limits: key.key_limits.clone(),
        usage: known.usage,
        db: known.db,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_first_messages() {
        let f = parse_client_first("n,,n=,r=abc").expect("ok");
        assert_eq!(f, ClientFirst { gs2_header: "n,,", bare: "n=,r=abc", nonce: "abc" });
        assert_eq!(parse_client_first("y,,n=x,r=q").map(|f| f.gs2_header), Ok("y,,"));
        for bad in
            ["", "n", "n,,", "p=tls-server-end-point,,n=,r=a", "x,,n=,r=a", "n,,n=,r=", "n,,m=1,n=,r=a", "n,b,n=,r=a"]
        {
            assert!(parse_client_first(bad).is_err(), "{bad}");
        }
    }
}
