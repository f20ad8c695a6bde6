//! Backend messages the door writes itself (the rest are relayed from upstream
//! byte for byte): ReadyForQuery, ParameterStatus, BackendKeyData, and the
//! completions it answers locally (ParseComplete, CloseComplete,
//! CommandComplete).

use bytes::{BufMut, BytesMut};

use super::{put_cstr, put_frame};

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    put_frame(buf, b'Z', |b| b.put_u8(status));
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    put_frame(buf, b'S', |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, value.as_bytes());
    });
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    put_frame(buf, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

pub fn parse_complete(buf: &mut BytesMut) {
    put_frame(buf, b'1', |_| {});
}

pub fn close_complete(buf: &mut BytesMut) {
    put_frame(buf, b'3', |_| {});
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    put_frame(buf, b'C', |b| put_cstr(b, tag.as_bytes()));
}
