//! Source addresses: each virtual client binds its own `127.x.y.z` before it
//! connects, so proxies that hash the client address see distinct clients,
//! and each address has its own 28k ephemeral ports.
//!
//! The third octet varies fastest because nginx `ip_hash` keys on the first
//! three octets of an IPv4 address: clients that differed only in the last
//! octet would all land on one backend.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

/// Addresses in one block (`127.<block>.1-254.1-254`).
const PER_BLOCK: u32 = 254 * 254;

/// A range of source addresses starting at a block of `127.0.0.0/8`.
#[derive(Debug, Clone, Copy)]
pub struct Sources {
    block: u8,
}

impl Sources {
    /// `block` picks the second octet of the first address; runs that
    /// should not share addresses use different blocks.
    pub fn new(block: u8) -> Self {
        Sources { block }
    }

    /// The address of client `index`, never a `.0` or `.255` octet.
    pub fn addr(&self, index: u32) -> Ipv4Addr {
        let block = u32::from(self.block) + index / PER_BLOCK;
        let within = index % PER_BLOCK;
        let third = (within % 254 + 1) as u8;
        let fourth = (within / 254 + 1) as u8;
        Ipv4Addr::new(127, (block % 256) as u8, third, fourth)
    }
}

/// Connects to `target` from `source` (port chosen by the kernel), with
/// Nagle off: every packet here is a latency-sensitive message.
pub async fn connect(source: Ipv4Addr, target: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_vary_the_third_octet_first_and_skip_zero_and_broadcast() {
        let s = Sources::new(3);
        assert_eq!(s.addr(0), Ipv4Addr::new(127, 3, 1, 1));
        assert_eq!(s.addr(1), Ipv4Addr::new(127, 3, 2, 1));
        assert_eq!(s.addr(253), Ipv4Addr::new(127, 3, 254, 1));
        assert_eq!(s.addr(254), Ipv4Addr::new(127, 3, 1, 2));
        assert_eq!(s.addr(PER_BLOCK), Ipv4Addr::new(127, 4, 1, 1));
    }

    #[test]
    fn distinct_indexes_give_distinct_addresses() {
        let s = Sources::new(1);
        let all: std::collections::HashSet<_> = (0..70_000).map(|i| s.addr(i)).collect();
        assert_eq!(all.len(), 70_000);
    }
}
