//! COPY sub-protocol messages. `CopyData`, `CopyDone` and `CopyFail` are decoded
//! in the parent (their bodies need no more than a length check) and forwarded
//! unchanged; this file holds what the door encodes itself.

use bytes::BytesMut;

/// `CopyFail` with a reason, sent upstream when a client vanishes mid-COPY.
pub fn encode_copy_fail(buf: &mut BytesMut, reason: &str) {
    super::put_frame(buf, b'f', |b| super::put_cstr(b, reason.as_bytes()));
}
