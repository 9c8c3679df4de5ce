//! The client address a request is placed by.
//!
//! The TCP peer, unless the peer is a trusted proxy: then the right-most
//! address in `Forwarded` (or, without it, `X-Forwarded-For`) that is not a
//! trusted proxy itself. Anything to the left of that hop was written by the
//! client and could be spoofed, so it is never believed. A header entry that
//! is not an address stops the walk at the last hop that was believed.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;
use stickyio_shared::placement::canonical_ip;

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

const FORWARDED: &str = "forwarded";

/// Headers to read forwarding chains from: a `HeaderMap`, or the borrowed
/// slices of a request head as parsed on the public listener.
pub trait Headers {
    /// Every value of `name` (lowercase), as text; `None` for a value that
    /// is not text.
    fn text_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Option<&'a str>> + 'a;
}

impl Headers for HeaderMap {
    fn text_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Option<&'a str>> + 'a {
        self.get_all(name).iter().map(|v| v.to_str().ok())
    }
}

impl Headers for [httparse::Header<'_>] {
    fn text_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Option<&'a str>> + 'a {
        self.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| {
                let text = h
                    .value
                    .iter()
                    .all(|b| *b == b'\t' || (0x20..0x7f).contains(b));
                text.then(|| std::str::from_utf8(h.value.trim_ascii()).ok())
                    .flatten()
            })
    }
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// The address to place the request by.
pub fn client_ip<H: Headers + ?Sized>(peer: IpAddr, headers: &H, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical_ip(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let chain = if headers.text_values(FORWARDED).next().is_some() {
        forwarded_chain(headers)
    } else {
        x_forwarded_for_chain(headers)
    };
    let mut believed = peer;
    for hop in chain.iter().rev() {
        let Some(ip) = hop else { break };
        believed = canonical_ip(*ip);
        if !is_trusted(believed, trusted) {
            break;
        }
    }
    believed
}

/// Every `X-Forwarded-For` entry, left to right, `None` for garbage.
fn x_forwarded_for_chain<H: Headers + ?Sized>(headers: &H) -> Vec<Option<IpAddr>> {
    headers
        .text_values(X_FORWARDED_FOR)
        .flat_map(|v| v.unwrap_or("\u{0}").split(','))
        .map(|s| parse_node(s.trim()))
        .collect()
}

/// Every `for=` of `Forwarded` (RFC 7239), left to right, `None` for
/// garbage, `unknown` and obfuscated identifiers.
fn forwarded_chain<H: Headers + ?Sized>(headers: &H) -> Vec<Option<IpAddr>> {
    let mut chain = Vec::new();
    for value in headers.text_values(FORWARDED) {
        let Some(value) = value else {
            chain.push(None);
            continue;
        };
        for element in value.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
            });
            if let Some(node) = node {
                chain.push(parse_node(node.trim_matches('"')));
            }
        }
    }
    chain
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = s.parse::<SocketAddr>() {
        return Some(sock.ip());
    }
    s.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=7.7.7.7")]);
        assert_eq!(
            client_ip(ip("127.0.0.9"), &h, &nets(&["10.0.0.0/8"])),
            ip("127.0.0.9")
        );
        assert_eq!(client_ip(ip("127.0.0.9"), &h, &[]), ip("127.0.0.9"));
    }

    #[test]
    fn trusted_peer_gives_the_rightmost_untrusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("1.2.3.4"));
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("1.2.3.4"));
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "9.9.9.9"),
            (
                "forwarded",
                "for=6.6.6.6, For=\"[2001:db8::7]:4711\";proto=http, for=10.1.1.1:80;by=10.0.0.1",
            ),
        ]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("2001:db8::7"));
    }

    #[test]
    fn garbage_stops_at_the_last_believed_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "1.2.3.4, nonsense, 10.0.0.5")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.5"));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.1"));
        let h = headers(&[("x-forwarded-for", "")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn spoofed_and_garbage_hops_never_move_the_client_left_of_the_real_one() {
        let trusted = nets(&["10.0.0.0/8"]);
        let proxy = ip("10.0.0.1");
        // Whatever the client prepends, the hop its proxy appended wins.
        for spoof in [
            "1.1.1.1",
            "10.9.9.9",
            "127.0.0.1",
            "::1",
            "[::1]:80, 10.0.0.7",
            "999.1.1.1",
            "1.2.3.4%eth0",
            "\"1.2.3.4\"",
            ",,,,",
            "for=1.1.1.1",
        ] {
            let h = headers(&[("x-forwarded-for", &format!("{spoof}, 203.0.113.9"))]);
            assert_eq!(client_ip(proxy, &h, &trusted), ip("203.0.113.9"), "{spoof}");
            let h = headers(&[(
                "forwarded",
                &format!("for={spoof};proto=https, for=203.0.113.9"),
            )]);
            assert_eq!(client_ip(proxy, &h, &trusted), ip("203.0.113.9"), "{spoof}");
        }
        // Bytes that are not text stop the walk at the proxy itself.
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"1.2.3.4\xff").unwrap(),
        );
        assert_eq!(client_ip(proxy, &h, &trusted), proxy);
        let mut h = HeaderMap::new();
        h.append(FORWARDED, HeaderValue::from_bytes(b"for=\xfe").unwrap());
        assert_eq!(client_ip(proxy, &h, &trusted), proxy);
        // The same from a parsed request head.
        let parsed = [httparse::Header {
            name: "X-Forwarded-For",
            value: b"1.2.3.4\xff",
        }];
        assert_eq!(client_ip(proxy, &parsed[..], &trusted), proxy);
        let parsed = [httparse::Header {
            name: "Forwarded",
            value: b" for=1.2.3.4, for=203.0.113.9 ",
        }];
        assert_eq!(client_ip(proxy, &parsed[..], &trusted), ip("203.0.113.9"));
        // A long chain is walked without trouble and still ends right.
        let long = format!("{}203.0.113.10", "10.0.0.9, ".repeat(5000));
        let h = headers(&[("x-forwarded-for", &long)]);
        assert_eq!(client_ip(proxy, &h, &trusted), ip("203.0.113.10"));
    }

    #[test]
    fn all_trusted_chain_gives_the_leftmost_and_mapped_peers_are_ipv4() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        let h = headers(&[("x-forwarded-for", "10.0.0.3, 10.0.0.2")]);
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &h, &trusted),
            ip("10.0.0.3")
        );
        let h = headers(&[("x-forwarded-for", "::ffff:1.2.3.4")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("1.2.3.4"));
    }
}
