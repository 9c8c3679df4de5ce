//! `X-Forwarded-For` and `Forwarded` come straight from clients (or from
//! proxies in front of them). The input is split into header values. Two
//! rules must hold whatever the values: an untrusted peer is placed by its
//! own address, and behind a trusted proxy the right-most untrusted hop wins,
//! whatever a client wrote to the left of it.
#![no_main]

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use stickyio_gateway::client_ip::client_ip;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let trusted: Vec<IpNet> = ["10.0.0.0/8", "fd00::/8", "127.0.0.1/32"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    // The selector's low bit picks the header; `Forwarded` wins when present.
    let name = if selector & 1 == 1 {
        "forwarded"
    } else {
        "x-forwarded-for"
    };
    let mut headers = HeaderMap::new();
    for value in rest.split(|b| *b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let untrusted_peer: IpAddr = [192, 0, 2, selector].into();
    assert_eq!(
        client_ip(untrusted_peer, &headers, &trusted),
        untrusted_peer
    );
    let proxy: IpAddr = [10, 0, 0, selector].into();
    let _ = client_ip(proxy, &headers, &trusted);

    // A trusted proxy appends what it saw: the real client, then itself.
    let real: IpAddr = [198, 51, 100, selector].into();
    let inner_proxy: IpAddr = [10, 1, 2, selector].into();
    for ip in [real, inner_proxy] {
        let hop = if name == "forwarded" {
            format!("for={ip}")
        } else {
            ip.to_string()
        };
        headers.append(name, HeaderValue::from_str(&hop).expect("ascii"));
    }
    assert_eq!(client_ip(proxy, &headers, &trusted), real);
});
