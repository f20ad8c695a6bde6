//! The extended query protocol: Parse, Bind, Describe, Execute, Close, Sync,
//! Flush. Decoders validate the whole body (a malformed Bind never reaches an
//! upstream connection, which would otherwise drop the connection for
//! everyone sharing it); encoders rewrite statement names for pooling.

use bytes::{BufMut, BytesMut};

use super::{DecodeError, Reader, put_cstr, put_frame};

/// `Parse`: statement name, query text, parameter type OIDs (raw, 4 bytes each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    pub param_types: &'a [u8],
}

impl<'a> Parse<'a> {
    pub(super) fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let name = r.cstr()?;
        let query = r.cstr()?;
        let n = r.i16()?;
        let n = usize::try_from(n).map_err(|_| DecodeError("negative parameter count"))?;
        let param_types = r.bytes(n * 4)?;
        Ok(Parse { name, query, param_types })
    }

    /// Encode as a Parse named `name`.
    pub fn encode_as(&self, buf: &mut BytesMut, name: &[u8]) {
        encode_parse(buf, name, self.query, self.param_types);
    }
}

/// Encode a Parse message.
pub fn encode_parse(buf: &mut BytesMut, name: &[u8], query: &[u8], param_types: &[u8]) {
    put_frame(buf, b'P', |b| {
        put_cstr(b, name);
        put_cstr(b, query);
        b.put_i16(i16::try_from(param_types.len() / 4).unwrap_or(i16::MAX));
        b.put_slice(param_types);
    });
}

/// `Bind`: portal and statement names; `rest` (formats, values, result
/// formats) is validated but forwarded untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub rest: &'a [u8],
}

fn count(r: &mut Reader<'_>) -> Result<usize, DecodeError> {
    usize::try_from(r.i16()?).map_err(|_| DecodeError("negative count"))
}

impl<'a> Bind<'a> {
    pub(super) fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        let all = r.rest();
        let mut v = Reader::new(all);
        let formats = count(&mut v)?;
        v.bytes(formats * 2)?;
        let values = count(&mut v)?;
        for _ in 0..values {
            let len = v.i32()?;
            if len >= 0 {
                v.bytes(usize::try_from(len).map_err(|_| DecodeError("bad value length"))?)?;
            } else if len != -1 {
                return Err(DecodeError("bad value length"));
            }
        }
        let results = count(&mut v)?;
        v.bytes(results * 2)?;
        v.finish()?;
        Ok(Bind { portal, statement, rest: all })
    }

    /// Encode with another statement name.
    pub fn encode_as(&self, buf: &mut BytesMut, statement: &[u8]) {
        put_frame(buf, b'B', |b| {
            put_cstr(b, self.portal);
            put_cstr(b, statement);
            b.put_slice(self.rest);
        });
    }
}

/// The target of Describe and Close: a statement (`S`) or a portal (`P`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub kind: u8,
    pub name: &'a [u8],
}

impl<'a> Target<'a> {
    pub(super) fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let kind = r.u8()?;
        if kind != b'S' && kind != b'P' {
            return Err(DecodeError("Describe/Close target must be 'S' or 'P'"));
        }
        Ok(Target { kind, name: r.cstr()? })
    }

    pub fn is_statement(&self) -> bool {
        self.kind == b'S'
    }

    /// Encode as message `tag` (`D` or `C`) with another name.
    pub fn encode_as(&self, buf: &mut BytesMut, tag: u8, name: &[u8]) {
        put_frame(buf, tag, |b| {
            b.put_u8(self.kind);
            put_cstr(b, name);
        });
    }
}

/// Encode `Sync`.
pub fn encode_sync(buf: &mut BytesMut) {
    put_frame(buf, b'S', |_| {});
}

#[cfg(test)]
mod tests {
    use super::super::{FrontendMessage, decode};
    use super::*;

    #[test]
    fn rewrites_keep_the_rest() {
        let body = b"\0s1\0\0\x01\0\x01\0\x01\0\0\0\x02ab\0\0";
        let Ok(FrontendMessage::Bind(b)) = decode(b'B', body) else { panic!("bind") };
        let mut out = BytesMut::new();
        b.encode_as(&mut out, b"sl_x");
        let Ok(FrontendMessage::Bind(b2)) = decode(out[0], &out[5..]) else { panic!("re-decode") };
        assert_eq!(b2.statement, b"sl_x");
        assert_eq!(b2.rest, b.rest);

        let Ok(FrontendMessage::Parse(p)) = decode(b'P', b"s1\0select $1\0\0\x01\0\0\0\x17") else { panic!("parse") };
        let mut out = BytesMut::new();
        p.encode_as(&mut out, b"sl_y");
        let Ok(FrontendMessage::Parse(p2)) = decode(out[0], &out[5..]) else { panic!("re-decode") };
        assert_eq!((p2.name, p2.query, p2.param_types), (&b"sl_y"[..], p.query, p.param_types));
    }
}
