//! The untyped first packet: StartupMessage (protocol 3.0), SSLRequest,
//! GSSENCRequest and CancelRequest.

use super::{DecodeError, MAX_STARTUP_LEN, Reader};

const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// A decoded first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    Startup { params: Vec<(String, String)> },
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
}

impl StartupPacket {
    /// A startup parameter by name.
    pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Check the length word of a startup packet (which counts itself) and return
/// the body length.
pub fn startup_len(len_word: [u8; 4]) -> Result<usize, DecodeError> {
    let len = i32::from_be_bytes(len_word);
    if len < 8 {
        return Err(DecodeError("startup packet is too short"));
    }
    let len = usize::try_from(len).map_err(|_| DecodeError("bad startup packet length"))?;
    if len > MAX_STARTUP_LEN {
        return Err(DecodeError("startup packet is too large"));
    }
    Ok(len - 4)
}

/// Decode a startup packet body (everything after the length word).
pub fn decode_startup(body: &[u8]) -> Result<StartupPacket, DecodeError> {
    let mut r = Reader::new(body);
    let code = r.i32()?;
    let packet = match code {
        SSL_REQUEST => StartupPacket::SslRequest,
        GSSENC_REQUEST => StartupPacket::GssEncRequest,
        CANCEL_REQUEST => StartupPacket::Cancel { pid: r.i32()?, secret: r.i32()? },
        PROTOCOL_3_0 => {
            let mut params = Vec::new();
            loop {
                let key = r.cstr_utf8()?;
                if key.is_empty() {
                    break;
                }
                let value = r.cstr_utf8()?;
                if params.len() >= 64 {
                    return Err(DecodeError("too many startup parameters"));
                }
                params.push((key.to_owned(), value.to_owned()));
            }
            StartupPacket::Startup { params }
        }
        c if c >> 16 == 3 => return Err(DecodeError("unsupported protocol 3.x minor version")),
        _ => return Err(DecodeError("unsupported frontend protocol")),
    };
    r.finish()?;
    Ok(packet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut v = code.to_be_bytes().to_vec();
        v.extend_from_slice(rest);
        v
    }

    #[test]
    fn decodes_each_kind() {
        assert_eq!(decode_startup(&body(SSL_REQUEST, b"")), Ok(StartupPacket::SslRequest));
        assert_eq!(decode_startup(&body(GSSENC_REQUEST, b"")), Ok(StartupPacket::GssEncRequest));
        let mut c = body(CANCEL_REQUEST, &7i32.to_be_bytes());
        c.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(decode_startup(&c), Ok(StartupPacket::Cancel { pid: 7, secret: 9 }));
        let s = decode_startup(&body(PROTOCOL_3_0, b"user\0acme\0database\0tenant_acme\0\0")).expect("startup");
        let StartupPacket::Startup { params } = s else { panic!("not startup") };
        assert_eq!(StartupPacket::param(&params, "user"), Some("acme"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(startup_len(4i32.to_be_bytes()).is_err());
        assert!(startup_len(((MAX_STARTUP_LEN + 1) as i32).to_be_bytes()).is_err());
        assert!(startup_len((-8i32).to_be_bytes()).is_err());
        assert!(decode_startup(b"GET / HTTP/1.1\r\n").is_err());
        assert!(decode_startup(&body(PROTOCOL_3_0, b"user\0acme\0")).is_err()); // no final NUL
        assert!(decode_startup(&body(PROTOCOL_3_0, b"user\0acme\0\0x")).is_err());
        assert!(decode_startup(&body(PROTOCOL_3_0, b"user\0\xff\0\0")).is_err());
        assert!(decode_startup(&body(SSL_REQUEST, b"x")).is_err());
        assert!(decode_startup(&body(CANCEL_REQUEST, b"\0\0")).is_err());
        assert!(decode_startup(&body(196_610, b"\0")).is_err());
        assert!(decode_startup(b"").is_err());
    }
}
