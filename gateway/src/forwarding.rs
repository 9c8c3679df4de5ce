//! Header rewriting between client and node.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1: `Connection`, the headers it names,
//! `Proxy-Connection`, `Keep-Alive`, `TE`, `Transfer-Encoding`, `Upgrade`,
//! plus `Trailer`, `Proxy-Authenticate` and `Proxy-Authorization`) describe one
//! connection and are dropped. The node is told who the client is with
//! `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded`; what an untrusted
//! peer sent in those headers is replaced, never passed on.

use std::net::IpAddr;

use http::header::{self, FORWARDED, HeaderMap, HeaderName, HeaderValue};

use crate::client_ip::X_FORWARDED_FOR;

const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const FIXED_HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in FIXED_HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A client request's headers as sent to a node: hop-by-hop headers dropped,
/// forwarding headers added.
pub fn rewrite_request(headers: &mut HeaderMap, peer: IpAddr, peer_trusted: bool) {
    let host = headers.get(header::HOST).cloned();
    strip_hop_by_hop(headers);
    add_forwarding(headers, peer, peer_trusted, host.as_ref());
}

/// A node's response headers as sent to the client: hop-by-hop headers
/// dropped, the node named in `x-stickyio-node`.
pub fn rewrite_response(headers: &mut HeaderMap, node: &str) {
    strip_hop_by_hop(headers);
    if let Ok(name) = HeaderValue::from_str(node) {
        headers.insert(NODE_HEADER, name);
    }
}

/// Names the node that served a response, so clients and tests can see pinning.
pub const NODE_HEADER: &str = "x-stickyio-node";

/// Adds the client to `X-Forwarded-For` and `Forwarded`, and sets
/// `X-Forwarded-Proto`. A trusted peer's chain is extended; an untrusted
/// peer's is replaced.
pub fn add_forwarding(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_trusted: bool,
    host: Option<&HeaderValue>,
) {
    if !peer_trusted {
        headers.remove(X_FORWARDED_FOR);
        headers.remove(FORWARDED);
        headers.remove(X_FORWARDED_PROTO);
    }
    let xff = match joined(headers, X_FORWARDED_FOR) {
        Some(chain) => format!("{chain}, {peer}"),
        None => peer.to_string(),
    };
    let node = match peer {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node};proto=http");
    if let Some(host) = host
        .and_then(|h| h.to_str().ok())
        .filter(|h| is_token_safe(h))
    {
        element.push_str(&format!(";host=\"{host}\""));
    }
    let forwarded = match joined(headers, FORWARDED.as_str()) {
        Some(chain) => format!("{chain}, {element}"),
        None => element,
    };
    set(headers, X_FORWARDED_FOR, &xff);
    set(headers, FORWARDED.as_str(), &forwarded);
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
}

fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    // Built only from addresses and visible-ASCII header text, so always valid.
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// A `Host` that can sit inside a quoted string without escaping.
fn is_token_safe(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "close"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("cookie", "io=abc"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "cookie"]);
    }

    #[test]
    fn untrusted_peers_cannot_inject_a_chain() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("example.com:8080");
        add_forwarding(&mut h, "127.0.0.7".parse().unwrap(), false, Some(&host));
        assert_eq!(h["x-forwarded-for"], "127.0.0.7");
        assert_eq!(
            h["forwarded"],
            "for=127.0.0.7;proto=http;host=\"example.com:8080\""
        );
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn trusted_peers_chains_are_extended() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-forwarded-proto", "https"),
        ]);
        add_forwarding(&mut h, "::1".parse().unwrap(), true, None);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, ::1");
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
