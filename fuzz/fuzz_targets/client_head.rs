//! Every request head a client sends is parsed by the gateway itself
//! (`client_wire`), before anything else looks at it. Any bytes must not
//! panic; a head that parses is inside the bytes, its target is in origin
//! form, and a cut-short copy of it is only ever "not yet whole".
#![no_main]

use libfuzzer_sys::fuzz_target;
use stickyio_gateway::client_wire::parse_request_head;

const MAX_BYTES: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut slots = [httparse::EMPTY_HEADER; 16];
    let Ok(Some(head)) = parse_request_head(data, &mut slots, MAX_BYTES) else {
        return;
    };
    let len = head.len;
    assert!(len <= data.len() && len <= MAX_BYTES);
    assert!(head.target.starts_with('/') || head.target == "*");
    for cut in [len / 2, len.saturating_sub(1)] {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        assert!(
            matches!(parse_request_head(&data[..cut], &mut slots, MAX_BYTES), Ok(None)),
            "a head cut at {cut} of {len} bytes must wait for more"
        );
    }
});
