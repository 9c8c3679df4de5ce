//! The gateway watches the first bytes of every polling handshake response to
//! learn the session's `sid`, and stops watching at the first verdict. So a
//! verdict on a prefix must agree with the verdict on the whole body: no
//! prefix of an open packet may be judged "not a handshake", and no prefix
//! may yield a different `sid`. Close-packet detection must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stickyio_gateway::engineio::{Sniffed, has_close_packet, sniff_handshake};

fuzz_target!(|data: &[u8]| {
    let whole = sniff_handshake(data);
    let _ = has_close_packet(data);
    if let Sniffed::Open(open) = &whole {
        for end in 0..data.len() {
            match sniff_handshake(&data[..end]) {
                Sniffed::NeedMore => {}
                Sniffed::Open(early) => assert_eq!(&early, open, "prefix of {end} bytes"),
                Sniffed::NotHandshake => panic!("prefix of {end} bytes judged foreign"),
            }
        }
    }
});
