//! A pg-door client on the raw protocol, for what no driver sends: a
//! Query message that announces `len` bytes, sends all of them but the
//! last, and stalls.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Ctx, Tenant};

/// One backend message: (tag, body), or None when the stream ends.
async fn read_message(s: &mut TcpStream, buf: &mut BytesMut) -> Option<(u8, BytesMut)> {
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() > len {
                let tag = buf[0];
                buf.advance(5);
                return Some((tag, buf.split_to(len.saturating_sub(4))));
            }
        }
        if s.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// The SQLSTATE and message of an ErrorResponse body.
fn error_fields(body: &[u8]) -> String {
    let (mut code, mut msg) = (String::new(), String::new());
    for field in body.split(|&b| b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => msg = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    format!("{code} {msg}")
}

/// Start up and log in with SCRAM-SHA-256 as `t`.
async fn login(ctx: &Ctx, t: &Tenant) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(("127.0.0.1", ctx.pg_port)).await.map_err(|e| e.to_string())?;
    let (mut rbuf, mut wbuf) = (BytesMut::new(), BytesMut::new());
    frontend::startup_message([("user", t.name.as_str()), ("database", t.name.as_str())], &mut wbuf)
        .map_err(|e| e.to_string())?;
    let mut scram = None;
    loop {
        s.write_all(&wbuf).await.map_err(|e| e.to_string())?;
        wbuf.clear();
        let (tag, mut body) = read_message(&mut s, &mut rbuf).await.ok_or("closed during login")?;
        match tag {
            b'R' => match body.get_i32() {
                0 => {}
                10 => {
                    let sc = ScramSha256::new(t.service_key.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, sc.message(), &mut wbuf)
                        .map_err(|e| e.to_string())?;
                    scram = Some(sc);
                }
                11 => {
                    let sc = scram.as_mut().ok_or("SASL continue before SASL")?;
                    sc.update(&body).map_err(|e| e.to_string())?;
                    frontend::sasl_response(sc.message(), &mut wbuf).map_err(|e| e.to_string())?;
                }
                12 => scram.as_mut().ok_or("SASL final before SASL")?.finish(&body).map_err(|e| e.to_string())?,
                n => return Err(format!("auth method {n}")),
            },
            b'E' => return Err(error_fields(&body)),
            b'Z' => return Ok(s),
            _ => {}
        }
    }
}

/// Log in, send a Query of `len` bytes but its last, hold it until `until`;
/// what the gateway did.
pub async fn partial_query(ctx: &Ctx, t: &Tenant, len: usize, until: Instant) -> String {
    let mut s = match login(ctx, t).await {
        Ok(s) => s,
        Err(e) => return format!("login: {e}"),
    };
    let mut head = BytesMut::new();
    head.put_u8(b'Q');
    head.put_u32(u32::try_from(len + 4).expect("length fits u32"));
    let chunk = vec![b' '; 1 << 20];
    let mut sent = 0usize;
    let mut refused = None;
    if let Err(e) = s.write_all(&head).await {
        refused = Some(e.to_string());
    }
    while refused.is_none() && sent < len - 1 {
        let n = chunk.len().min(len - 1 - sent);
        match tokio::time::timeout(Duration::from_secs(10), s.write_all(&chunk[..n])).await {
            Ok(Ok(())) => sent += n,
            Ok(Err(e)) => refused = Some(e.to_string()),
            Err(_) => refused = Some("write blocked 10 s".into()),
        }
    }
    let mut rbuf = BytesMut::new();
    let wait = until.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    let answer = match tokio::time::timeout(wait, read_message(&mut s, &mut rbuf)).await {
        Ok(Some((b'E', body))) => format!("ErrorResponse {}", error_fields(&body)),
        Ok(Some((tag, _))) => format!("message '{}'", char::from(tag)),
        Ok(None) => "connection closed".into(),
        Err(_) => "nothing, held open".into(),
    };
    let sent_mib = sent >> 20;
    match refused {
        Some(e) => format!("write failed after {sent_mib} MiB ({e}); gateway: {answer}"),
        None => format!("sent {sent_mib} MiB of {} MiB; gateway: {answer}", len >> 20),
    }
}
