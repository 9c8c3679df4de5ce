//! Route tags arrive from clients in every session request. Opening any
//! string must never panic; a tag the gateway sealed must open to what was
//! sealed; and no single changed byte of a sealed tag may still verify
//! (a client must not aim a session at a node of its choosing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stickyio_gateway::route_tag::RouteKeys;

fuzz_target!(|data: &[u8]| {
    let keys = RouteKeys::new(b"fuzzing route key 0123456789", None);
    let text = String::from_utf8_lossy(data);
    let _ = keys.open(&text);
    // Seal a node taken from the input, then flip each byte of the tag.
    let (name, rest) = text.split_at(text.len().min(8).min(text.floor_char_boundary(8)));
    let (addr, sid) = rest.split_at(rest.floor_char_boundary(rest.len() / 2));
    if name.is_empty() || addr.is_empty() || sid.is_empty() || sid.contains('.') {
        return;
    }
    let tagged = keys.seal(name, addr, sid);
    let opened = keys.open(&tagged).expect("a sealed tag opens");
    assert_eq!((opened.name.as_str(), opened.addr.as_str(), opened.node_sid.as_str()), (name, addr, sid));
    let bytes = tagged.as_bytes();
    let dots = tagged.match_indices('.').map(|(i, _)| i).collect::<Vec<_>>();
    for i in 0..dots[1] {
        let mut forged = bytes.to_vec();
        forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
        if let Ok(forged) = std::str::from_utf8(&forged)
            && forged != tagged
        {
            assert!(keys.open(forged).is_err(), "a changed byte at {i} still verified: {forged}");
        }
    }
});
