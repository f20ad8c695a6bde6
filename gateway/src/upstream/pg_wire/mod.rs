//! Raw protocol connections to tenant databases, for the Postgres-wire door.
//!
//! Unlike `tenant_pg` (tokio-postgres clients for the HTTP door), these
//! connections speak the wire protocol directly so the door can relay client
//! messages byte for byte. [`ServerConn::connect`] does the startup and
//! authentication (SCRAM-SHA-256 as the tenant's own role, via
//! `postgres-protocol`); afterwards the door reads and writes frames.
//! [`pool`] keeps a `deadpool` pool of them per tenant.
//!
//! Besides the socket, a connection remembers what the door needs for
//! transaction pooling: the prepared statements it holds ([`prepared`]),
//! whose unnamed statement it holds, which client session state it carries,
//! and whether it is still usable ([`ServerConn::is_alive`] notices one the
//! server closed while it sat idle).

pub mod pool;
pub mod prepared;

use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::secret::{ExposeSecret, SecretString};

/// Initial read and write buffer sizes of a connection.
const READ_BUFFER: usize = 8 << 10;
const WRITE_BUFFER: usize = 1 << 10;
/// Buffers grown past this by a large message are released when the
/// connection goes back to the pool.
const KEEP_BUFFER: usize = 64 << 10;

/// Largest backend message accepted from an upstream (a DataRow may be 1 GiB).
const MAX_BACKEND_MESSAGE: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("upstream i/o: {0}")]
    Io(#[from] io::Error),
    #[error("upstream refused: {code} {message}")]
    Server { code: String, message: String },
    #[error("upstream protocol: {0}")]
    Protocol(String),
    #[error("upstream timed out")]
    Timeout,
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub password: SecretString,
    /// Extra startup parameters (GUCs) of every connection, e.g. `statement_timeout`.
    pub options: Vec<(String, String)>,
    pub connect_timeout: Duration,
}

impl UpstreamTarget {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The fields of an ErrorResponse body we care about (severity, code, message).
pub fn parse_error_fields(body: &[u8]) -> (String, String, String) {
    let (mut sev, mut code, mut msg) = (String::new(), String::new(), String::new());
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match field {
            b'V' => sev = value,
            b'S' if sev.is_empty() => sev = value,
            b'C' => code = value,
            b'M' => msg = value,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    (sev, code, msg)
}

/// One authenticated upstream connection.
pub struct ServerConn {
    stream: TcpStream,
    rbuf: BytesMut,
    /// Messages waiting to be written; see [`ServerConn::flush`].
    pub wbuf: BytesMut,
    pub pid: i32,
    pub secret: i32,
    /// ParameterStatus values reported at startup.
    pub params: Vec<(String, String)>,
    /// The prepared statements this connection holds.
    pub prepared: prepared::Prepared,
    /// Whose unnamed statement the server holds: (session id, generation).
    pub unnamed_owner: Option<(u64, u64)>,
    /// Hash of the client session state (SETs) last applied here.
    pub session_hash: u64,
    /// A statement may have changed session state in ways not tracked.
    pub dirty: bool,
    /// The connection must not be reused (i/o error, unknown state).
    pub broken: bool,
    /// The longest row (DataRow, CopyData body) read whole: a longer one is
    /// returned with an empty body ([`ServerConn::take_skipped`] tells its
    /// length) and its bytes are discarded as they arrive, so a row the
    /// result cap refuses anyway is never held in memory. None: no cap.
    pub row_cap: Option<usize>,
    /// Bytes of a skipped row still to discard.
    skip: usize,
    /// Length of the skipped row last returned.
    skipped: Option<usize>,
}

impl ServerConn {
    /// Connect, start up and authenticate.
    pub async fn connect(t: &UpstreamTarget) -> Result<Self, WireError> {
        tokio::time::timeout(t.connect_timeout, Self::connect_inner(t)).await.map_err(|_| WireError::Timeout)?
    }

    async fn connect_inner(t: &UpstreamTarget) -> Result<Self, WireError> {
        let stream = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|source| WireError::Connect { addr: t.addr(), source })?;
        stream.set_nodelay(true)?;
        let mut conn = ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(READ_BUFFER),
            wbuf: BytesMut::with_capacity(WRITE_BUFFER),
            pid: 0,
            secret: 0,
            params: Vec::new(),
            prepared: prepared::Prepared::default(),
            unnamed_owner: None,
            session_hash: 0,
            dirty: false,
            broken: false,
            row_cap: None,
            skip: 0,
            skipped: None,
        };
        let mut params: Vec<(&str, &str)> =
            vec![("user", t.user.as_str()), ("database", t.database.as_str()), ("client_encoding", "UTF8")];
        params.extend(t.options.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        frontend::startup_message(params, &mut conn.wbuf)?;
        conn.flush().await?;
        let password = t.password.expose_secret().as_bytes();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = conn.read_message().await?;
            match msg {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password, &mut conn.wbuf)?;
                    conn.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(t.user.as_bytes(), password, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut conn.wbuf)?;
                    conn.flush().await?;
                }
                Message::AuthenticationSasl(_) => {
                    let s = ScramSha256::new(password, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut conn.wbuf)?;
                    scram = Some(s);
                    conn.flush().await?;
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| WireError::Protocol("SASL continue before start".into()))?;
                    s.update(body.data())?;
                    frontend::sasl_response(s.message(), &mut conn.wbuf)?;
                    conn.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| WireError::Protocol("SASL final before start".into()))?;
                    s.finish(body.data())?;
                }
                Message::ParameterStatus(body) => {
                    conn.params.push((body.name()?.to_owned(), body.value()?.to_owned()));
                }
                Message::BackendKeyData(body) => {
                    conn.pid = body.process_id();
                    conn.secret = body.secret_key();
                }
                Message::ReadyForQuery(_) => return Ok(conn),
                Message::ErrorResponse(_) => {
                    return Err(WireError::Protocol("unreachable: errors are handled in read_message".into()));
                }
                Message::NoticeResponse(_) => {}
                _ => return Err(WireError::Protocol("unexpected message during startup".into())),
            }
        }
    }

    /// One startup-phase message, parsed by `postgres-protocol`.
    async fn read_message(&mut self) -> Result<Message, WireError> {
        loop {
            if self.rbuf.first() == Some(&b'E') && self.has_frame() {
                let (_, body) = self.read_frame().await?;
                let (_, code, message) = parse_error_fields(&body);
                return Err(WireError::Server { code, message });
            }
            if let Some(m) = Message::parse(&mut self.rbuf)? {
                return Ok(m);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(WireError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Is a whole frame already buffered?
    pub fn has_frame(&self) -> bool {
        self.skip == 0 && frame_span(&self.rbuf).is_some_and(|n| self.rbuf.len() >= n)
    }

    /// [`ServerConn::read_frame`] when it needs no waiting: `None` when it
    /// would have to wait for the server. (A frame is split off the read
    /// buffer as it is; see [`ServerConn::row_cap`] for long rows.)
    pub fn buffered_frame(&mut self) -> Option<io::Result<(u8, Bytes)>> {
        self.skipped = None;
        if self.skip > 0 {
            let n = self.skip.min(self.rbuf.len());
            self.rbuf.advance(n);
            self.skip -= n;
            if self.skip > 0 {
                return None;
            }
        }
        if self.rbuf.len() < 5 {
            return None;
        }
        let Some(n) = frame_span(&self.rbuf) else {
            return Some(Err(io::Error::new(io::ErrorKind::InvalidData, "bad backend message length")));
        };
        let body = n - 5;
        if matches!(self.rbuf[0], b'D' | b'd') && self.row_cap.is_some_and(|cap| body > cap) {
            let tag = self.rbuf[0];
            self.rbuf.advance(5);
            self.skip = body;
            self.skipped = Some(body);
            return Some(Ok((tag, Bytes::new())));
        }
        if self.rbuf.len() < n {
            return None;
        }
        let mut frame = self.rbuf.split_to(n);
        let tag = frame[0];
        frame.advance(5);
        Some(Ok((tag, frame.freeze())))
    }

    /// The body length of the frame [`ServerConn::read_frame`] last returned
    /// empty because it was longer than [`ServerConn::row_cap`].
    pub fn take_skipped(&mut self) -> Option<usize> {
        self.skipped.take()
    }

    /// A skipped row is still being discarded (the connection is mid-message).
    pub fn mid_message(&self) -> bool {
        self.skip > 0
    }

    /// Can an idle connection still be used? An idle connection has nothing
    /// to read: end of stream (the server restarted or the backend was
    /// terminated, usually after a FATAL `57P01`) or any unsolicited bytes
    /// mean it must not reach a client.
    ///
    /// First without a system call: tokio clears a socket's read readiness
    /// once a read drained it (a short read or `WouldBlock`) and its reactor
    /// sets it again when bytes or the end of stream arrive, so "not
    /// readable" means nothing came since the last reply. Otherwise (bytes,
    /// end of stream, or readiness not cleared by the last read) one
    /// non-blocking `recv(MSG_PEEK)` decides (through socket2, as tokio has no
    /// synchronous peek). This saves a `recv` per checkout.
    pub fn is_alive(&self) -> bool {
        if self.broken || !self.rbuf.is_empty() {
            return false;
        }
        if futures::FutureExt::now_or_never(self.stream.ready(tokio::io::Interest::READABLE)).is_none() {
            return true;
        }
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(&self.stream).peek(&mut probe) {
            Ok(_) => false,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        }
    }

    /// Release buffers a large message grew (the connection goes back to
    /// the pool; otherwise it would keep that memory for as long as it lives).
    pub fn shrink(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > KEEP_BUFFER {
            self.rbuf = BytesMut::with_capacity(READ_BUFFER);
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > KEEP_BUFFER {
            self.wbuf = BytesMut::with_capacity(WRITE_BUFFER);
        }
    }

    /// The next backend frame: type byte and body. Cancel-safe (all state is in
    /// the read buffer).
    pub async fn read_frame(&mut self) -> io::Result<(u8, Bytes)> {
        loop {
            if let Some(r) = self.buffered_frame() {
                return r;
            }
            if self.skip > 0 {
                self.rbuf.reserve(READ_BUFFER);
            } else if let Some(n) = frame_span(&self.rbuf) {
                self.rbuf.reserve(n - self.rbuf.len());
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Write everything queued in `wbuf`.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            let r = self.stream.write_all(&self.wbuf).await;
            self.wbuf.clear();
            if r.is_err() {
                self.broken = true;
            }
            r?;
        }
        Ok(())
    }

    /// Close the statement copies queued in `prepared.to_close` (Close
    /// messages and a Sync; closing a name that does not exist is no error).
    /// Returns the asynchronous messages (notifications, notices, parameter
    /// reports) that arrived meanwhile, for the client holding the connection.
    pub async fn close_statements(&mut self) -> Result<Vec<(u8, Bytes)>, WireError> {
        let names = std::mem::take(&mut self.prepared.to_close);
        let mut other = Vec::new();
        if names.is_empty() {
            return Ok(other);
        }
        for n in &names {
            frontend::close(b'S', &String::from_utf8_lossy(n), &mut self.wbuf)?;
        }
        frontend::sync(&mut self.wbuf);
        self.flush().await?;
        loop {
            let (tag, body) = self.read_frame().await.inspect_err(|_| self.broken = true)?;
            match tag {
                b'Z' => return Ok(other),
                b'A' | b'N' | b'S' => other.push((tag, body)),
                _ => {}
            }
        }
    }

    /// Run `sql` as a simple query and wait for ReadyForQuery, discarding
    /// results. Returns the final transaction status, or the first error the
    /// server reported.
    pub async fn simple(&mut self, sql: &str) -> Result<u8, WireError> {
        self.simple_inner(sql, &mut Vec::new()).await
    }

    /// Like [`Self::simple`], returning the ParameterStatus values reported.
    pub async fn simple_collect(&mut self, sql: &str) -> Result<Vec<(String, String)>, WireError> {
        let mut params = Vec::new();
        self.simple_inner(sql, &mut params).await?;
        Ok(params)
    }

    async fn simple_inner(&mut self, sql: &str, params: &mut Vec<(String, String)>) -> Result<u8, WireError> {
        // A simple query drops the unnamed statement.
        self.unnamed_owner = None;
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        let mut first_error = None;
        loop {
            let (tag, body) = match self.read_frame().await {
                Ok(f) => f,
                Err(e) => {
                    self.broken = true;
                    return Err(e.into());
                }
            };
            match tag {
                b'E' if first_error.is_none() => {
                    let (_, code, message) = parse_error_fields(&body);
                    first_error = Some(WireError::Server { code, message });
                }
                b'S' => {
                    let mut parts = body.split(|&b| b == 0);
                    if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                        params.push((String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()));
                    }
                }
                b'Z' => {
                    let status = body.first().copied().unwrap_or(b'I');
                    return match first_error {
                        Some(e) => Err(e),
                        None => Ok(status),
                    };
                }
                // COPY cannot be started by the door's own statements.
                b'G' | b'H' | b'W' => {
                    self.broken = true;
                    return Err(WireError::Protocol("unexpected COPY".into()));
                }
                _ => {}
            }
        }
    }
}

/// Total size of the frame at the start of `buf` (type byte included), once
/// its header is buffered. `None` if the header is incomplete or invalid.
fn frame_span(buf: &[u8]) -> Option<usize> {
    let hdr = buf.get(..5)?;
    let len = i32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]);
    let len = usize::try_from(len).ok().filter(|&l| (4..=MAX_BACKEND_MESSAGE).contains(&l))?;
    Some(len + 1)
}

/// Send a CancelRequest for (`pid`, `secret`) to the upstream server.
pub async fn cancel(t: &UpstreamTarget, pid: i32, secret: i32) -> Result<(), WireError> {
    let mut stream = tokio::time::timeout(t.connect_timeout, TcpStream::connect((t.host.as_str(), t.port)))
        .await
        .map_err(|_| WireError::Timeout)?
        .map_err(|source| WireError::Connect { addr: t.addr(), source })?;
    let mut buf = BytesMut::new();
    frontend::cancel_request(pid, secret, &mut buf);
    stream.write_all(&buf).await?;
    // The server closes the socket when done; wait for that briefly.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut sink)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields() {
        let body = b"SERROR\0VERROR\0C42601\0Msyntax error\0\0";
        assert_eq!(parse_error_fields(body), ("ERROR".into(), "42601".into(), "syntax error".into()));
        assert_eq!(parse_error_fields(b"Cxx"), (String::new(), "xx".into(), String::new()));
    }

    #[test]
    fn frame_spans() {
        assert_eq!(frame_span(b"Z\0\0\0\x05I"), Some(6));
        assert_eq!(frame_span(b"Z\0\0"), None);
        assert_eq!(frame_span(b"Z\0\0\0\x03"), None);
    }
}
