//! The NVMe/TCP PDU decoder on arbitrary bytes, in both roles and every
//! digest setting: it must return PDUs, "need more" or a fatal error, and
//! never panic or loop.
#![no_main]

use bytes::BytesMut;
use fabric::wire::tcp::{Digests, PduDecoder, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else { return };
    let role = if flags & 1 == 0 { Role::Controller } else { Role::Host };
    let mut dec = PduDecoder::new(role, 1 << 16);
    dec.digests = Digests { header: flags & 2 != 0, data: flags & 4 != 0 };
    let mut buf = BytesMut::from(bytes);
    for _ in 0..64 {
        match dec.decode(&mut buf) {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        }
    }
});
