//! Fuzz the Postgres door's frontend decoders: startup packets, frame
//! headers, every message type, and the SASL initial response. They must
//! return errors, never panic, on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::frontend::pg::messages::{self, auth, startup};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    match first % 4 {
        0 => {
            let _ = startup::decode_startup(rest);
            if rest.len() >= 4 {
                let _ = startup::startup_len([rest[0], rest[1], rest[2], rest[3]]);
            }
        }
        1 => {
            if let Some((&tag, body)) = rest.split_first() {
                let _ = messages::decode(tag, body);
            }
        }
        2 => {
            if rest.len() >= 5 {
                let _ = messages::frame_len(rest[0], [rest[1], rest[2], rest[3], rest[4]], messages::MAX_MESSAGE_LEN);
            }
        }
        _ => {
            let _ = auth::decode_sasl_initial(rest);
        }
    }
});
