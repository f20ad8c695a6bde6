//! A cap on each message a Postgres server sends on the gateway's own
//! (tokio-postgres) connections to tenant databases.
//!
//! tokio-postgres reads a whole message into memory before it hands over any
//! of it, so one huge value (`SELECT repeat('x', 200000000)`) would be held
//! whole before the tenant's result cap could refuse it. [`FrameLimit`] sits
//! under tokio-postgres and follows the message framing of what it reads: a
//! message whose body is longer than the cap is not read at all. In its place
//! tokio-postgres gets an ErrorResponse (SQLSTATE 54000, [`TOO_LARGE`]) and
//! then the end of the stream, so the statement fails with that error
//! ([`is_too_large`]) and the connection closes; the server stops when it
//! finds the socket gone. Memory per connection stays below the cap plus one
//! read.
//!
//! Written here because tokio-postgres has no message size limit and no
//! library wraps its stream with one; [`LimitedConnect`] is the deadpool
//! connector that puts it under every pooled connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;

/// The message of the error a statement gets when a server message is over
/// the cap.
pub const TOO_LARGE: &str = "a message from the server is larger than the tenant's result cap";

/// How much is asked of the socket per read.
const READ_SIZE: usize = 16 << 10;

/// True if `e` is the error [`FrameLimit`] puts in place of a message over
/// its cap.
pub fn is_too_large(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| d.code().code() == "54000" && d.message() == TOO_LARGE)
}

/// A stream of backend messages with a cap on each one's body (see the
/// module doc). Writes pass through.
pub struct FrameLimit<S> {
    inner: S,
    limit: usize,
    /// Bytes read and not handed out yet: first `checked` bytes of whole
    /// headers and bodies, then at most a partial header.
    buf: BytesMut,
    checked: usize,
    /// Bytes of the current message's body not read yet.
    body_left: usize,
    /// A message was over the cap: the stream ends once `buf` is handed out.
    ended: bool,
}

impl<S> FrameLimit<S> {
    pub fn new(inner: S, limit: usize) -> Self {
        Self { inner, limit, buf: BytesMut::new(), checked: 0, body_left: 0, ended: false }
    }

    /// Follow the framing of the unchecked bytes in `buf`.
    fn check(&mut self) {
        let mut at = self.checked;
        loop {
            if self.body_left > 0 {
                let take = self.body_left.min(self.buf.len() - at);
                at += take;
                self.body_left -= take;
                if self.body_left > 0 {
                    break;
                }
                continue;
            }
            let Some(header) = self.buf.get(at..at + 5) else { break };
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            // A length below 4 is a protocol error tokio-postgres reports.
            let body = len.saturating_sub(4);
            if body > self.limit {
                self.buf.truncate(at);
                error_response(&mut self.buf, TOO_LARGE);
                at = self.buf.len();
                self.ended = true;
                break;
            }
            at += 5;
            self.body_left = body;
        }
        self.checked = at;
    }
}

/// An ErrorResponse of SQLSTATE 54000 (program_limit_exceeded).
fn error_response(buf: &mut BytesMut, message: &str) {
    let fields: [(u8, &str); 4] = [(b'S', "ERROR"), (b'V', "ERROR"), (b'C', "54000"), (b'M', message)];
    let body: usize = fields.iter().map(|(_, v)| v.len() + 2).sum::<usize>() + 1;
    buf.put_u8(b'E');
    buf.put_u32(u32::try_from(body + 4).unwrap_or(u32::MAX));
    for (code, value) in fields {
        buf.put_u8(code);
        buf.put_slice(value.as_bytes());
        buf.put_u8(0);
    }
    buf.put_u8(0);
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameLimit<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.checked > 0 {
                let n = this.checked.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.checked -= n;
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            this.buf.reserve(READ_SIZE);
            let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buf))?;
            if n == 0 {
                // The server closed: a partial header left goes as it is
                // (tokio-postgres reports the truncated message).
                this.checked = this.buf.len();
                this.ended = true;
                continue;
            }
            this.check();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameLimit<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream that fails every read and write with the error of a TCP connect
/// that failed: tokio-postgres turns it into its own error type (which has
/// no public constructor) on its first write.
struct Unconnected(Option<io::Error>);

impl Unconnected {
    fn error(&mut self) -> io::Error {
        self.0.take().unwrap_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "not connected"))
    }
}

impl AsyncRead for Unconnected {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(self.error()))
    }
}

impl AsyncWrite for Unconnected {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(self.error()))
    }
    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(self.error()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Host and port of a connection's server (the first TCP host of `cfg`).
pub fn server_addr(cfg: &tokio_postgres::Config) -> (String, u16) {
    let host = cfg
        .get_hosts()
        .iter()
        .find_map(|h| match h {
            Host::Tcp(h) => Some(h.clone()),
            #[allow(unreachable_patterns)]
            _ => None,
        })
        .unwrap_or_else(|| "localhost".into());
    (host, cfg.get_ports().first().copied().unwrap_or(5432))
}

async fn tcp(cfg: &tokio_postgres::Config) -> io::Result<TcpStream> {
    let (host, port) = server_addr(cfg);
    let connect = TcpStream::connect((host.as_str(), port));
    let stream = match cfg.get_connect_timeout() {
        Some(t) => tokio::time::timeout(*t, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out connecting to the server"))??,
        None => connect.await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects pooled connections over a [`FrameLimit`] of `limit` bytes.
pub struct LimitedConnect {
    pub limit: usize,
}

type ConnectFuture<'a> = Pin<
    Box<
        dyn Future<Output = Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>>
            + Send
            + 'a,
    >,
>;

impl deadpool_postgres::Connect for LimitedConnect {
    fn connect(&self, cfg: &tokio_postgres::Config) -> ConnectFuture<'_> {
        let cfg = cfg.clone();
        let limit = self.limit;
        Box::pin(async move {
            match tcp(&cfg).await {
                Ok(stream) => spawned(cfg.connect_raw(FrameLimit::new(stream, limit), NoTls).await?),
                // The login fails on its first write, with `e` as the cause.
                Err(e) => spawned(cfg.connect_raw(Unconnected(Some(e)), NoTls).await?),
            }
        })
    }
}

/// The client, with its connection driven by a task of its own.
fn spawned<S>(
    (client, conn): (tokio_postgres::Client, tokio_postgres::Connection<S, tokio_postgres::tls::NoTlsStream>),
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "tenant database connection ended");
        }
    });
    Ok((client, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&u32::try_from(body.len() + 4).expect("len").to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    async fn read_all(input: Vec<u8>, limit: usize, chunk: usize) -> Vec<u8> {
        // A reader that hands out `chunk` bytes at a time (headers split
        // across reads included).
        let (mut w, r) = tokio::io::duplex(chunk);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in input.chunks(chunk) {
                w.write_all(c).await.expect("write");
            }
        });
        let mut out = Vec::new();
        FrameLimit::new(r, limit).read_to_end(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn messages_within_the_cap_pass_unchanged() {
        let mut input = message(b'T', b"row description");
        input.extend(message(b'D', &[7u8; 1000]));
        input.extend(message(b'C', b"SELECT 1\0"));
        for chunk in [1, 3, 5, 7, 64, 4096] {
            assert_eq!(read_all(input.clone(), 1000, chunk).await, input, "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn a_message_over_the_cap_becomes_an_error_and_the_end() {
        let mut input = message(b'T', b"row description");
        let before = input.len();
        input.extend(message(b'D', &[7u8; 5000]));
        input.extend(message(b'C', b"SELECT 1\0"));
        for chunk in [1, 4, 6, 64, 4096] {
            let out = read_all(input.clone(), 1000, chunk).await;
            assert_eq!(out[..before], input[..before], "chunk {chunk}");
            let mut expected = BytesMut::new();
            error_response(&mut expected, TOO_LARGE);
            assert_eq!(out[before..], expected[..], "chunk {chunk}");
        }
    }
}
