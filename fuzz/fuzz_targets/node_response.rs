//! What a node sends back is parsed by the gateway itself: the response head
//! and a chunked body. Any bytes must not panic, and decoding must not
//! depend on how the bytes were cut into reads.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stickyio_gateway::wire::{Chunked, Step, parse_response_head};

/// Decodes `wire` as a chunked body fed `step` bytes at a time.
fn decode(wire: &[u8], step: usize) -> Option<Vec<u8>> {
    let mut state = Chunked::default();
    let mut buf = BytesMut::new();
    let (mut out, mut fed) = (Vec::new(), 0);
    for _ in 0..wire.len() * 4 + 16 {
        match state.step(&mut buf).ok()? {
            Step::Data(n) => {
                out.extend_from_slice(&buf.split_to(n));
                state.took(n);
            }
            Step::Done => return Some(out),
            Step::NeedMore if fed >= wire.len() => return None,
            Step::NeedMore => {
                let end = (fed + step).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    for method in [http::Method::GET, http::Method::HEAD] {
        let _ = parse_response_head(&mut BytesMut::from(data), &method);
    }
    let whole = decode(data, data.len().max(1));
    assert_eq!(decode(data, 1), whole, "byte at a time");
    assert_eq!(decode(data, 7), whole, "seven at a time");
});
