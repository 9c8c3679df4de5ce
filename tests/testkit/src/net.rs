//! Loopback addresses for the tests: free ports, distinct client addresses
//! (loopback is a whole /8) and connections bound to one of them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

use crate::wait::TIMEOUT;

/// A loopback port free at the time of asking, for a listener that must be
/// known before it binds (a node's own URL, a config file).
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` distinct free loopback ports, all held until every one is picked.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("reserve a port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("reserved port").port())
}

/// The i-th distinct client address, 127.20.0.1 upwards.
pub fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        20 + (i / 60_000) as u8,
        ((i % 60_000) / 250) as u8,
        (i % 250) as u8 + 1,
    )
}

/// A TCP connection to `target` from `source`, within [`TIMEOUT`].
pub async fn connect_from(source: Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    tokio::time::timeout(TIMEOUT, socket.connect(target))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

/// `http://` and a port just freed on `ip`: connecting is refused, every
/// time, as long as no other test binds on `ip` (give each test its own).
pub fn refused_url(ip: Ipv4Addr) -> String {
    let gone = std::net::TcpListener::bind((ip, 0)).expect("bind a loopback port");
    let url = format!("http://{}", gone.local_addr().expect("bound address"));
    drop(gone);
    url
}
