//! The client socket: buffered, length-checked frame reading (cancel-safe, so
//! the session can `select!` between client and upstream) and buffered writes.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::messages::{DecodeError, frame_len};

/// Buffers larger than this are released when the session goes idle, so idle
/// clients cost little memory.
const KEEP_BUFFER: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientIoError {
    #[error("client i/o: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("client closed the connection in the middle of a message")]
    Truncated,
}

pub struct ClientConn<S> {
    pub stream: S,
    rbuf: BytesMut,
    pub wbuf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientConn<S> {
    pub fn new(stream: S) -> Self {
        Self { stream, rbuf: BytesMut::new(), wbuf: BytesMut::new() }
    }

    /// Is a whole frame already buffered?
    pub fn has_frame(&self) -> bool {
        let Some(h) = self.rbuf.get(..5) else { return false };
        let len = i32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        usize::try_from(len).is_ok_and(|l| self.rbuf.len() > l)
    }

    /// Bytes read but not yet consumed (must be empty before a TLS handshake).
    pub fn buffered(&self) -> usize {
        self.rbuf.len()
    }

    /// The next message: type byte and body, or `None` on a clean EOF between
    /// messages. Lengths are checked before anything is buffered.
    pub async fn read_frame(&mut self, max: usize) -> Result<Option<(u8, Bytes)>, ClientIoError> {
        loop {
            if self.rbuf.len() >= 5 {
                let tag = self.rbuf[0];
                let body = frame_len(tag, [self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]], max)?;
                if self.rbuf.len() >= 5 + body {
                    let mut frame = self.rbuf.split_to(5 + body);
                    frame.advance(5);
                    return Ok(Some((tag, frame.freeze())));
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
            self.wbuf.clear();
            self.stream.flush().await?;
        }
        Ok(())
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
