//! Header rewriting between client and node.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1: `Connection`, the headers it names,
//! `Proxy-Connection`, `Keep-Alive`, `TE`, `Transfer-Encoding`, `Upgrade`,
//! plus `Trailer`, `Proxy-Authenticate` and `Proxy-Authorization`) describe one
//! connection and are dropped. The node is told who the client is with
//! `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded`; what an untrusted
//! peer sent in those headers is replaced, never passed on.

use std::io::Write as _;
use std::net::IpAddr;

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::client_ip::X_FORWARDED_FOR;
use crate::client_wire::{has_token, values};
use crate::wire::RequestBody;

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

/// How the gateway tells a node who the client is.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding {
    /// The TCP peer.
    pub peer: IpAddr,
    /// The peer is a trusted proxy: its forwarding chains are extended.
    pub peer_trusted: bool,
    /// How the client reached the gateway: `http` or `https`.
    pub proto: &'static str,
}

/// What else a node's request head needs besides the client's headers.
#[derive(Debug, Clone, Copy)]
pub struct NodeHead<'a> {
    pub method: &'a Method,
    /// The target as the node must see it: these parts in turn (the
    /// client's target, cut around the sid the node knows by another name).
    pub target: [&'a str; 3],
    pub framing: RequestBody,
    /// Relay the client's `Upgrade` with `Connection: upgrade`.
    pub upgrade: bool,
    /// Drop `Sec-WebSocket-Extensions` (the gateway rewrites the first frame).
    pub no_extensions: bool,
    /// `Host` to send when the client sent none.
    pub default_host: Option<&'a str>,
}

/// Appends the request head a node gets, written straight from the client's
/// headers: hop-by-hop headers (and `Expect`, answered by the gateway)
/// dropped, `X-Forwarded-For`, `Forwarded` and `X-Forwarded-Proto` added. A
/// trusted peer's chains are extended; an untrusted peer's are replaced.
pub fn encode_node_head(
    out: &mut Vec<u8>,
    node: &NodeHead<'_>,
    client: &[httparse::Header<'_>],
    fwd: Forwarding,
) {
    out.extend_from_slice(node.method.as_str().as_bytes());
    out.push(b' ');
    for part in node.target {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let named = |name: &str| has_token(client, "connection", name);
    let (mut xff, mut forwarded, mut proto_sent, mut host) = (Vec::new(), Vec::new(), false, None);
    for h in client {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if FIXED_HOP_BY_HOP.iter().any(|n| is(n))
            || is("expect")
            || (node.no_extensions && is("sec-websocket-extensions"))
            || named(name)
        {
            continue;
        }
        if is(X_FORWARDED_FOR) || is("forwarded") || is(X_FORWARDED_PROTO) {
            if !fwd.peer_trusted {
                continue;
            }
            if is(X_FORWARDED_FOR) || is("forwarded") {
                if let Some(text) = text(h.value) {
                    let chain = if is("forwarded") {
                        &mut forwarded
                    } else {
                        &mut xff
                    };
                    chain.push(text);
                }
                continue;
            }
            proto_sent = true;
        }
        if is("host") {
            host = Some(h.value);
        }
        header(out, name.as_bytes(), h.value);
    }
    if host.is_none()
        && let Some(default) = node.default_host
    {
        header(out, b"host", default.as_bytes());
    }
    // Written in place: no string per request for the chains.
    let peer = fwd.peer;
    out.extend_from_slice(b"x-forwarded-for: ");
    for hop in xff {
        out.extend_from_slice(hop.as_bytes());
        out.extend_from_slice(b", ");
    }
    let _ = write!(out, "{peer}\r\nforwarded: ");
    for element in forwarded {
        out.extend_from_slice(element.as_bytes());
        out.extend_from_slice(b", ");
    }
    let _ = match peer {
        IpAddr::V4(v4) => write!(out, "for={v4};proto={}", fwd.proto),
        IpAddr::V6(v6) => write!(out, "for=\"[{v6}]\";proto={}", fwd.proto),
    };
    if let Some(host) = host.and_then(text).filter(|h| is_token_safe(h)) {
        let _ = write!(out, ";host=\"{host}\"");
    }
    out.extend_from_slice(b"\r\n");
    if !proto_sent {
        header(out, X_FORWARDED_PROTO.as_bytes(), fwd.proto.as_bytes());
    }
    if node.upgrade {
        for protocol in values(client, "upgrade") {
            header(out, b"upgrade", protocol);
        }
        header(out, b"connection", b"upgrade");
    }
    if node.framing == RequestBody::Chunked {
        header(out, b"transfer-encoding", b"chunked");
    }
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A header value as text: visible ASCII, spaces and tabs, as
/// `HeaderValue::to_str` accepts.
fn text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
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

    /// The node's head for a GET of `/t` with `client` headers.
    fn node_head(
        client: &[(&'static str, &'static str)],
        fwd: Forwarding,
        node: NodeHead<'_>,
    ) -> String {
        let headers: Vec<httparse::Header<'_>> = client
            .iter()
            .map(|(name, value)| httparse::Header {
                name,
                value: value.as_bytes(),
            })
            .collect();
        let mut out = Vec::new();
        encode_node_head(&mut out, &node, &headers, fwd);
        String::from_utf8(out).unwrap()
    }

    const GET: NodeHead<'static> = NodeHead {
        method: &Method::GET,
        target: ["/t", "", ""],
        framing: RequestBody::None,
        upgrade: false,
        no_extensions: false,
        default_host: None,
    };

    fn from(peer: &str, peer_trusted: bool) -> Forwarding {
        Forwarding {
            peer: peer.parse().unwrap(),
            peer_trusted,
            proto: "http",
        }
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let head = node_head(
            &[
                ("Connection", "keep-alive, X-Secret-Hop"),
                ("connection", "close"),
                ("x-secret-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("upgrade", "websocket"),
                ("proxy-authorization", "Basic x"),
                ("expect", "100-continue"),
                ("cookie", "io=abc"),
                ("host", "gw"),
            ],
            from("127.0.0.7", false),
            GET,
        );
        assert_eq!(
            head,
            "GET /t HTTP/1.1\r\ncookie: io=abc\r\nhost: gw\r\nx-forwarded-for: 127.0.0.7\r\n\
             forwarded: for=127.0.0.7;proto=http;host=\"gw\"\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn untrusted_peers_cannot_inject_a_chain() {
        let head = node_head(
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "for=6.6.6.6"),
                ("x-forwarded-proto", "https"),
                ("host", "example.com:8080"),
            ],
            from("127.0.0.7", false),
            GET,
        );
        assert!(head.contains("x-forwarded-for: 127.0.0.7\r\n"), "{head}");
        assert!(
            head.contains("forwarded: for=127.0.0.7;proto=http;host=\"example.com:8080\"\r\n"),
            "{head}"
        );
        assert!(head.contains("x-forwarded-proto: http\r\n"), "{head}");
        assert!(
            !head.contains("6.6.6.6") && !head.contains("https"),
            "{head}"
        );
    }

    #[test]
    fn trusted_peers_chains_are_extended() {
        let head = node_head(
            &[
                ("x-forwarded-for", "1.2.3.4"),
                ("X-Forwarded-For", "5.6.7.8"),
                ("x-forwarded-proto", "https"),
            ],
            from("::1", true),
            GET,
        );
        assert!(
            head.contains("x-forwarded-for: 1.2.3.4, 5.6.7.8, ::1\r\n"),
            "{head}"
        );
        assert!(
            head.contains("forwarded: for=\"[::1]\";proto=http\r\n"),
            "{head}"
        );
        assert!(head.contains("x-forwarded-proto: https\r\n"), "{head}");
        assert_eq!(head.matches("x-forwarded-proto").count(), 1, "{head}");
    }

    #[test]
    fn upgrades_chunked_bodies_and_missing_hosts_get_their_headers() {
        let head = node_head(
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-extensions", "permessage-deflate"),
            ],
            from("10.0.0.1", false),
            NodeHead {
                upgrade: true,
                no_extensions: true,
                default_host: Some("node:1"),
                ..GET
            },
        );
        assert!(
            head.starts_with("GET /t HTTP/1.1\r\nhost: node:1\r\n"),
            "{head}"
        );
        assert!(
            head.ends_with("upgrade: websocket\r\nconnection: upgrade\r\n\r\n"),
            "{head}"
        );
        assert!(!head.contains("permessage"), "{head}");
        let head = node_head(
            &[("transfer-encoding", "chunked")],
            from("10.0.0.1", false),
            NodeHead {
                method: &Method::POST,
                framing: RequestBody::Chunked,
                ..GET
            },
        );
        assert_eq!(head.matches("transfer-encoding").count(), 1, "{head}");
        assert!(
            head.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{head}"
        );
    }
}
