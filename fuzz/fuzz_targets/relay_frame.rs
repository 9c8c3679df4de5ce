//! Relay frames arrive from peers over the mesh. Decoding must not panic, and
//! whatever decodes must survive an encode/decode round trip unchanged (so a
//! frame cannot change meaning as it is relayed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stickyio_shared::relay::{decode, encode};

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(publication) = decode(data, MAX) else {
        return;
    };
    let bytes = encode(&publication).expect("a decoded frame encodes");
    let again = decode(&bytes, usize::MAX).expect("an encoded frame decodes");
    assert_eq!(again, publication);
});
