//! Authentication messages: the SASL exchange of SCRAM-SHA-256.
//!
//! The client's `p` message means "SASLInitialResponse" first and
//! "SASLResponse" after; the auth state machine (`frontend::pg::auth`) picks
//! the decoder.

use bytes::{BufMut, BytesMut};

use super::{DecodeError, Reader, put_cstr, put_frame};

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// `SASLInitialResponse`: the chosen mechanism and the client-first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitial<'a> {
    pub mechanism: &'a str,
    pub data: &'a [u8],
}

pub fn decode_sasl_initial(body: &[u8]) -> Result<SaslInitial<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let mechanism = r.cstr_utf8()?;
    let len = r.i32()?;
    let data = if len == -1 {
        &[][..]
    } else {
        r.bytes(usize::try_from(len).map_err(|_| DecodeError("bad SASL data length"))?)?
    };
    r.finish()?;
    Ok(SaslInitial { mechanism, data })
}

/// `AuthenticationSASL` offering SCRAM-SHA-256.
pub fn encode_sasl_mechanisms(buf: &mut BytesMut) {
    put_frame(buf, b'R', |b| {
        b.put_i32(10);
        put_cstr(b, SCRAM_SHA_256.as_bytes());
        b.put_u8(0);
    });
}

/// `AuthenticationSASLContinue` (11) or `AuthenticationSASLFinal` (12).
pub fn encode_sasl_step(buf: &mut BytesMut, code: i32, data: &[u8]) {
    put_frame(buf, b'R', |b| {
        b.put_i32(code);
        b.put_slice(data);
    });
}

/// `AuthenticationOk`.
pub fn encode_auth_ok(buf: &mut BytesMut) {
    put_frame(buf, b'R', |b| b.put_i32(0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_response() {
        let body = b"SCRAM-SHA-256\0\0\0\0\x05n,,ab";
        assert_eq!(decode_sasl_initial(body), Ok(SaslInitial { mechanism: SCRAM_SHA_256, data: b"n,,ab" }));
        assert!(decode_sasl_initial(b"SCRAM-SHA-256\0\0\0\0\x09n,,").is_err());
        assert!(decode_sasl_initial(b"SCRAM-SHA-256\0\xff\xff\xff\xf0").is_err());
        assert!(decode_sasl_initial(b"SCRAM").is_err());
    }
}
