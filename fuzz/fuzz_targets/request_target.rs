//! The gateway reads `EIO`, `sid` and `transport` from every request target a
//! client sends, before any routing: whatever the target, this must not
//! panic, and a `sid` it finds must be one that was really in the query.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use stickyio_gateway::engineio::EngineQuery;

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let query = EngineQuery::of_target(target);
    for method in [Method::GET, Method::POST, Method::OPTIONS] {
        let handshake = query.is_polling_handshake(&method);
        assert!(!handshake || (query.engine_io && query.sid.is_none()));
    }
    if let Some(sid) = &query.sid {
        let raw = target.split_once('?').map_or("", |(_, q)| q);
        assert!(!sid.is_empty() && raw.contains(&format!("sid={sid}")));
    }
});
