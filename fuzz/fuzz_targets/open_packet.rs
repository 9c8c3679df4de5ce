//! Open packets come from nodes, and the gateway rewrites their sid in a
//! polling handshake body and in a websocket's first frame. Any bytes must
//! not panic; a rewrite must carry the tagged sid and keep what follows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stickyio_gateway::open_packet::{FirstFrame, rewrite_first_frame, rewrite_polling};

fuzz_target!(|data: &[u8]| {
    let tag = |sid: &str| format!("T.M.{sid}");
    if let Some(r) = rewrite_polling(data, tag) {
        assert_eq!(r.client_sid, format!("T.M.{}", r.node_sid));
        let text = String::from_utf8_lossy(&r.bytes);
        assert!(text.contains(&r.client_sid), "the new sid is in the body");
    }
    match rewrite_first_frame(data, 4096, tag) {
        FirstFrame::Open(r, used) => {
            assert!(used <= data.len());
            assert_eq!(r.bytes[0], 0x81, "a final text frame");
        }
        FirstFrame::NeedMore | FirstFrame::Other => {}
    }
});
