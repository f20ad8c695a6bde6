//! Postgres protocol 3.0 messages as the door sees them: one file per message
//! family, a shared cursor ([`Reader`]) for decoding and [`put_frame`] for
//! encoding.
//!
//! Decoding untrusted client bytes is a pure function ([`decode`],
//! [`startup::decode_startup`], [`frame_len`]) so it can be unit-tested with
//! malformed input and fuzzed (`fuzz/fuzz_targets/frontend_decode.rs`). Every
//! length is checked before it is used; nothing here panics on any input.
//! Backend messages from upstream servers are parsed with `postgres-protocol`
//! (in `upstream::pg_wire`); the few the door synthesizes are in [`backend`].

pub mod auth;
pub mod backend;
pub mod copy;
pub mod error;
pub mod extended;
pub mod simple;
pub mod startup;

use bytes::{BufMut, BytesMut};

/// Largest startup packet (including its length word) a client may send.
pub const MAX_STARTUP_LEN: usize = 10 * 1024;
/// Largest regular frontend message body (Query, Bind, CopyData…).
pub const MAX_MESSAGE_LEN: usize = 64 << 20;
/// Largest message during authentication (SASL responses are tiny).
pub const MAX_AUTH_MESSAGE_LEN: usize = 8 * 1024;

/// Why client bytes could not be decoded. Always a protocol violation (08P01).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid frontend message: {0}")]
pub struct DecodeError(pub &'static str);

/// A cursor over a message body.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.buf.split_first().ok_or(DecodeError("truncated message"))?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError("truncated message"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated string, without its terminator.
    pub fn cstr(&mut self) -> Result<&'a [u8], DecodeError> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or(DecodeError("unterminated string"))?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string.
    pub fn cstr_utf8(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.cstr()?).map_err(|_| DecodeError("string is not UTF-8"))
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The body must be fully consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError("message length does not match its contents")) }
    }
}

/// One decoded frontend message (after startup). Text fields stay bytes: the
/// client's encoding need not be UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    Query(&'a [u8]),
    Parse(extended::Parse<'a>),
    Bind(extended::Bind<'a>),
    Describe(extended::Target<'a>),
    Execute {
        portal: &'a [u8],
        max_rows: i32,
    },
    Close(extended::Target<'a>),
    Sync,
    Flush,
    CopyData(&'a [u8]),
    CopyDone,
    CopyFail(&'a [u8]),
    Terminate,
    /// `p`: password / SASL response; its meaning depends on the auth state.
    Password(&'a [u8]),
}

/// Check a regular message's length word (which counts itself) and return the
/// body length. `max` bounds the body.
pub fn frame_len(tag: u8, len_word: [u8; 4], max: usize) -> Result<usize, DecodeError> {
    if !tag.is_ascii_alphabetic() {
        return Err(DecodeError("unknown message type"));
    }
    let len = i32::from_be_bytes(len_word);
    if len < 4 {
        return Err(DecodeError("message length is smaller than its header"));
    }
    let body = usize::try_from(len - 4).map_err(|_| DecodeError("bad message length"))?;
    if body > max {
        return Err(DecodeError("message is too large"));
    }
    Ok(body)
}

/// Decode one message body by its type byte.
pub fn decode(tag: u8, body: &[u8]) -> Result<FrontendMessage<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let msg = match tag {
        b'Q' => simple::decode_query(&mut r)?,
        b'X' => FrontendMessage::Terminate,
        b'P' => FrontendMessage::Parse(extended::Parse::decode(&mut r)?),
        b'B' => FrontendMessage::Bind(extended::Bind::decode(&mut r)?),
        b'D' => FrontendMessage::Describe(extended::Target::decode(&mut r)?),
        b'E' => FrontendMessage::Execute { portal: r.cstr()?, max_rows: r.i32()? },
        b'C' => FrontendMessage::Close(extended::Target::decode(&mut r)?),
        b'S' => FrontendMessage::Sync,
        b'H' => FrontendMessage::Flush,
        b'd' => FrontendMessage::CopyData(r.rest()),
        b'c' => FrontendMessage::CopyDone,
        b'f' => FrontendMessage::CopyFail(r.cstr()?),
        b'p' => FrontendMessage::Password(r.rest()),
        _ => return Err(DecodeError("unknown message type")),
    };
    r.finish()?;
    Ok(msg)
}

/// Append one message: type byte, length word, body written by `body`.
pub fn put_frame(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = i32::try_from(buf.len() - at).unwrap_or(i32::MAX);
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Append a NUL-terminated string.
pub fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths_are_checked() {
        assert_eq!(frame_len(b'Q', 9i32.to_be_bytes(), 100), Ok(5));
        assert!(frame_len(b'Q', 3i32.to_be_bytes(), 100).is_err());
        assert!(frame_len(b'Q', (-1i32).to_be_bytes(), 100).is_err());
        assert!(frame_len(b'Q', i32::MAX.to_be_bytes(), MAX_MESSAGE_LEN).is_err());
        assert!(frame_len(0, 4i32.to_be_bytes(), 100).is_err());
        assert!(frame_len(b'Q', 105i32.to_be_bytes(), 100).is_err());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let cases: &[(u8, &[u8])] = &[
            (b'Q', b"select 1"),                         // no terminator
            (b'Q', b"select 1\0extra"),                  // trailing bytes
            (b'P', b"s1\0select 1\0"),                   // missing parameter count
            (b'P', b"s1\0select 1\0\0\x02\0\0\0\x17"),   // count says 2, one given
            (b'B', b"\0s1\0\0\x01"),                     // truncated format count
            (b'B', b"\0s1\0\0\0\0\x01\0\0\0\x09ab\0\0"), // value longer than body
            (b'B', b"\0s1\0\xff\xff"),                   // negative count
            (b'D', b"X\0"),                              // bad kind
            (b'D', b""),
            (b'E', b"\0\0\0"),
            (b'C', b"S"),
            (b'S', b"x"),
            (b'f', b"oops"),
            (b'Z', b""), // not a frontend message
            (b'F', b""),
        ];
        for (tag, body) in cases {
            assert!(decode(*tag, body).is_err(), "{} {:?}", *tag as char, body);
        }
    }

    #[test]
    fn well_formed_bodies_decode() {
        assert_eq!(decode(b'Q', b"select 1\0"), Ok(FrontendMessage::Query(b"select 1")));
        assert_eq!(decode(b'S', b""), Ok(FrontendMessage::Sync));
        assert_eq!(decode(b'E', b"p\0\0\0\0\x05"), Ok(FrontendMessage::Execute { portal: b"p", max_rows: 5 }));
        let FrontendMessage::Bind(b) =
            decode(b'B', b"\0s1\0\0\x01\0\x01\0\x02\0\0\0\x02ab\xff\xff\xff\xff\0\0").expect("bind")
        else {
            panic!("not a bind")
        };
        assert_eq!(b.statement, b"s1");
        assert_eq!(b.portal, b"");
    }

    #[test]
    fn arbitrary_prefixes_never_panic() {
        let msgs: &[(u8, &[u8])] = &[
            (b'B', b"\0s1\0\0\x01\0\x01\0\x02\0\0\0\x02ab\xff\xff\xff\xff\0\0"),
            (b'P', b"s1\0select $1\0\0\x01\0\0\0\x17"),
        ];
        for (tag, body) in msgs {
            for n in 0..body.len() {
                assert!(decode(*tag, &body[..n]).is_err());
            }
        }
    }
}
