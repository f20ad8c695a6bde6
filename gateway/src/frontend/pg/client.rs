//! The client socket: buffered, length-checked frame reading (cancel-safe, so
//! the session can `select!` between client and upstream) and buffered writes.
//!
//! A message larger than [`SMALL_MESSAGE`] is buffered only with room in the
//! door's read budget (`server.pg_read_budget_bytes`, shared by all clients):
//! the room for its announced length is taken before any of it is allocated,
//! held while it arrives and while the session handles it, and a message that
//! finds no room is refused ([`ClientIoError::NoRoom`]) instead of buffered.

use std::io;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::messages::{DecodeError, frame_len};

/// Buffers larger than this are released when the session goes idle, so idle
/// clients cost little memory.
const KEEP_BUFFER: usize = 8 * 1024;

/// Messages with a body up to this size are read without the read budget
/// (each client has at most one partly received).
pub const SMALL_MESSAGE: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ClientIoError {
    #[error("client i/o: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("client closed the connection in the middle of a message")]
    Truncated,
    /// The read budget has no room for a message of this many bytes.
    #[error("no room to receive a message of {0} bytes")]
    NoRoom(usize),
}

pub struct ClientConn<S> {
    pub stream: S,
    rbuf: BytesMut,
    pub wbuf: BytesMut,
    /// The door's read budget, in bytes (see the module doc).
    budget: Arc<Semaphore>,
    /// Room for the large message being received.
    receiving: Option<OwnedSemaphorePermit>,
    /// Room for the large message last returned, until the next read.
    returned: Option<OwnedSemaphorePermit>,
    /// Bytes written to the client so far (see [`ClientConn::produced`]).
    flushed: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientConn<S> {
    pub fn new(stream: S, budget: Arc<Semaphore>) -> Self {
        Self {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            budget,
            receiving: None,
            returned: None,
            flushed: 0,
        }
    }

    /// Is a whole frame already buffered?
    pub fn has_frame(&self) -> bool {
        let Some(h) = self.rbuf.get(..5) else { return false };
        let len = i32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        usize::try_from(len).is_ok_and(|l| self.rbuf.len() > l)
    }

    /// [`ClientConn::read_frame`] when a whole frame is already buffered:
    /// `None` when it would have to wait for the client.
    pub fn buffered_frame(&mut self, max: usize) -> Option<Result<Option<(u8, Bytes)>, ClientIoError>> {
        self.returned = None;
        self.take_frame(max).map(|r| r.map(Some))
    }

    /// Split off the frame at the start of the buffer if it is all there.
    fn take_frame(&mut self, max: usize) -> Option<Result<(u8, Bytes), ClientIoError>> {
        let h = self.rbuf.get(..5)?;
        let tag = h[0];
        let body = match frame_len(tag, [h[1], h[2], h[3], h[4]], max) {
            Ok(b) => b,
            Err(e) => return Some(Err(e.into())),
        };
        if self.rbuf.len() < 5 + body {
            return None;
        }
        let mut frame = self.rbuf.split_to(5 + body);
        frame.advance(5);
        self.returned = self.receiving.take();
        if self.returned.is_some() {
            // What follows shares the message's allocation: move it to its
            // own, so that allocation goes with the message (and its room)
            // once it is handled.
            self.rbuf = BytesMut::from(&self.rbuf[..]);
        }
        Some(Ok((tag, frame.freeze())))
    }

    /// Bytes read but not yet consumed (must be empty before a TLS handshake).
    pub fn buffered(&self) -> usize {
        self.rbuf.len()
    }

    /// The next message: type byte and body, or `None` on a clean EOF between
    /// messages. Lengths are checked, and room for a large message taken from
    /// the read budget, before anything is buffered. The room of a large
    /// message stays taken until the next call (the caller has handled it).
    pub async fn read_frame(&mut self, max: usize) -> Result<Option<(u8, Bytes)>, ClientIoError> {
        self.returned = None;
        loop {
            if let Some(r) = self.take_frame(max) {
                return r.map(Some);
            }
            if self.rbuf.len() >= 5 {
                let tag = self.rbuf[0];
                let body = frame_len(tag, [self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]], max)?;
                if body > SMALL_MESSAGE && self.receiving.is_none() {
                    let room = u32::try_from(5 + body).map_err(|_| ClientIoError::NoRoom(5 + body))?;
                    let permit = self.budget.clone().try_acquire_many_owned(room).map_err(|_| {
                        metrics::counter!("sluice_pg_read_budget_refusals_total").increment(1);
                        ClientIoError::NoRoom(5 + body)
                    })?;
                    self.receiving = Some(permit);
                }
                self.rbuf.reserve(5 + body - self.rbuf.len());
            } else if self.rbuf.capacity() < 256 {
                self.rbuf.reserve(256);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return if self.rbuf.is_empty() { Ok(None) } else { Err(ClientIoError::Truncated) };
            }
        }
    }

    /// The whole frames buffered after the last one returned, without
    /// consuming them (type byte and body): the session looks ahead through
    /// an extended-protocol batch with them.
    pub fn buffered_frames(&self) -> impl Iterator<Item = (u8, &[u8])> {
        let mut rest: &[u8] = &self.rbuf;
        std::iter::from_fn(move || {
            let h = rest.get(..5)?;
            let len = usize::try_from(i32::from_be_bytes([h[1], h[2], h[3], h[4]])).ok()?.checked_sub(4)?;
            let body = rest.get(5..5 + len)?;
            let tag = h[0];
            rest = &rest[5 + len..];
            Some((tag, body))
        })
    }

    /// Bytes produced for the client so far, sent or buffered: unchanged
    /// between two calls means the client was sent nothing in between.
    pub fn produced(&self) -> u64 {
        self.flushed + self.wbuf.len() as u64
    }

    /// Bytes sent to the client so far.
    pub fn sent(&self) -> u64 {
        self.flushed
    }

    /// Take back what was produced after `mark` (an earlier
    /// [`ClientConn::produced`]) while none of it has been sent: false, and
    /// nothing changed, once some of it has.
    pub fn unproduce_to(&mut self, mark: u64) -> bool {
        let Some(keep) = mark.checked_sub(self.flushed).and_then(|k| usize::try_from(k).ok()) else { return false };
        if keep > self.wbuf.len() {
            return false;
        }
        self.wbuf.truncate(keep);
        true
    }

    /// Read exactly `n` bytes (startup packets).
    pub async fn read_exact(&mut self, n: usize) -> Result<Bytes, ClientIoError> {
        while self.rbuf.len() < n {
            self.rbuf.reserve(n - self.rbuf.len());
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ClientIoError::Truncated);
            }
        }
        Ok(self.rbuf.split_to(n).freeze())
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.flushed += self.wbuf.len() as u64;
            self.wbuf.clear();
            self.stream.flush().await?;
        }
        Ok(())
    }

    /// After a FATAL has been flushed: end our side (FIN), then read and
    /// drop what the client still sends until it closes, for a short while.
    /// Closing a socket that holds unread bytes (a query the client sent as
    /// the FATAL was being written) makes the kernel send a reset, and the
    /// client may then lose the FATAL and see only "connection reset".
    pub async fn linger(&mut self) {
        const FOR: std::time::Duration = std::time::Duration::from_millis(500);
        const AT_MOST: usize = 1 << 20;
        let drain = async {
            let _ = self.stream.shutdown().await;
            let mut scratch = [0u8; 8192];
            let mut seen = 0;
            while seen < AT_MOST {
                match self.stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen += n,
                }
            }
        };
        let _ = tokio::time::timeout(FOR, drain).await;
    }

    /// Release large buffers (the session is idle).
    pub fn shrink(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > KEEP_BUFFER {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > KEEP_BUFFER {
            self.wbuf = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_is_taken_back_only_while_unsent() {
        let (ours, _theirs) = tokio::io::duplex(1 << 16);
        let mut c = ClientConn::new(ours, Arc::new(tokio::sync::Semaphore::new(1 << 20)));
        c.wbuf.extend_from_slice(b"before");
        let mark = c.produced();
        c.wbuf.extend_from_slice(b"answer");
        assert!(c.unproduce_to(mark));
        assert_eq!(&c.wbuf[..], b"before");
        c.flush().await.expect("flush");
        let mark = c.produced();
        c.wbuf.extend_from_slice(b"answer");
        c.flush().await.expect("flush");
        assert!(!c.unproduce_to(mark), "the answer was sent");
        assert!(c.sent() > mark);
    }
}
