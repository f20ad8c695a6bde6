//! The simple query protocol: `Query` (and `Terminate`, decoded in the parent).

use super::{DecodeError, FrontendMessage, Reader};

pub(super) fn decode_query<'a>(r: &mut Reader<'a>) -> Result<FrontendMessage<'a>, DecodeError> {
    Ok(FrontendMessage::Query(r.cstr()?))
}

/// Encode a Query message (used for statements the door itself sends upstream).
pub fn encode_query(buf: &mut bytes::BytesMut, sql: &str) {
    super::put_frame(buf, b'Q', |b| super::put_cstr(b, sql.as_bytes()));
}
