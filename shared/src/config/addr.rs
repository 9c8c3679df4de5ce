//! A node's `host:port` (`nodes[].addr` in `gateway.toml`), parsed once when
//! the config is read: an IP address is kept as a socket address, connected
//! to without a lookup; a DNS name is kept as written and resolved on each
//! connect, so a node whose address moves is followed.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `host:port` with a DNS name, an IPv4 address or a bracketed IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    /// As written: what route tags carry and `/nodes` shows.
    text: String,
    /// Where the port starts in `text` (after the last `:`).
    port_at: usize,
    port: u16,
    /// The address itself when the host is an IP literal.
    ip: Option<SocketAddr>,
}

/// Why a text is not `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not host:port ({why})")]
pub struct AddrError {
    text: String,
    why: &'static str,
}

impl NodeAddr {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The socket address, when the host is an IP literal (no lookup needed).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip
    }

    /// The host as written: a name, an IPv4 address or `[IPv6]`.
    pub fn host(&self) -> &str {
        &self.text[..self.port_at - 1]
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The same host on another port (a node's health check port).
    pub fn with_port(&self, port: u16) -> NodeAddr {
        NodeAddr {
            text: format!("{}:{port}", self.host()),
            port_at: self.port_at,
            port,
            ip: self.ip.map(|ip| SocketAddr::new(ip.ip(), port)),
        }
    }
}

impl FromStr for NodeAddr {
    type Err = AddrError;

    fn from_str(text: &str) -> Result<Self, AddrError> {
        let fail = |why| AddrError {
            text: text.to_owned(),
            why,
        };
        let (host, port) = text.rsplit_once(':').ok_or(fail("no port"))?;
        let port = match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(fail("the port must be 1-65535")),
            Ok(port) => port,
        };
        let ip = if let Some(v6) = host.strip_prefix('[') {
            let v6 = v6.strip_suffix(']').ok_or(fail("unclosed `[`"))?;
            let ip = v6
                .parse::<Ipv6Addr>()
                .map_err(|_| fail("bad IPv6 address"))?;
            Some(SocketAddr::from((ip, port)))
        } else if is_dns_name(host) {
            // A dotted-decimal IPv4 address is a DNS-shaped name too.
            host.parse::<std::net::Ipv4Addr>()
                .ok()
                .map(|ip| SocketAddr::from((ip, port)))
        } else {
            return Err(fail("bad host name"));
        };
        Ok(NodeAddr {
            text: text.to_owned(),
            port_at: host.len() + 1,
            port,
            ip,
        })
    }
}

/// A node listening on a known socket address (the launcher's own nodes).
impl From<SocketAddr> for NodeAddr {
    fn from(ip: SocketAddr) -> Self {
        let text = ip.to_string();
        let port_at = text.rfind(':').map_or(0, |i| i + 1);
        NodeAddr {
            text,
            port_at,
            port: ip.port(),
            ip: Some(ip),
        }
    }
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for NodeAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for NodeAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_are_kept_as_socket_addresses_and_names_as_written() {
        let a: NodeAddr = "127.0.0.1:3001".parse().unwrap();
        assert_eq!(a.socket_addr(), Some("127.0.0.1:3001".parse().unwrap()));
        assert_eq!((a.host(), a.port()), ("127.0.0.1", 3001));
        let a: NodeAddr = "[::1]:2".parse().unwrap();
        assert_eq!(a.socket_addr(), Some("[::1]:2".parse().unwrap()));
        assert_eq!(a.host(), "[::1]");
        let a: NodeAddr = "node-b.svc.local:3002".parse().unwrap();
        assert_eq!(a.socket_addr(), None);
        assert_eq!(a.to_string(), "node-b.svc.local:3002");
        let check = a.with_port(9100);
        assert_eq!(
            (check.as_str(), check.port()),
            ("node-b.svc.local:9100", 9100)
        );
        let check: NodeAddr = "10.0.0.1:80".parse::<NodeAddr>().unwrap().with_port(81);
        assert_eq!(check.socket_addr(), Some("10.0.0.1:81".parse().unwrap()));
        let ip: SocketAddr = "[::1]:3001".parse().unwrap();
        assert_eq!(NodeAddr::from(ip), "[::1]:3001".parse().unwrap());
    }

    #[test]
    fn bad_addresses_say_why() {
        for (text, why) in [
            ("127.0.0.1", "no port"),
            ("127.0.0.1:0", "the port must be 1-65535"),
            ("127.0.0.1:70000", "the port must be 1-65535"),
            ("[::1:2", "unclosed `[`"),
            ("[nope]:2", "bad IPv6 address"),
            ("http://x:2", "bad host name"),
            (":2", "bad host name"),
        ] {
            let err = text.parse::<NodeAddr>().unwrap_err().to_string();
            assert_eq!(err, format!("{text:?} is not host:port ({why})"));
        }
    }
}
