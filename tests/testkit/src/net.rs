//! Loopback addresses for the tests: free ports, distinct client addresses
//! (loopback is a whole /8) and connections bound to one of them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

use crate::wait::TIMEOUT;

/// Where [`free_ports`] picks: below the ephemeral range (32768 and up), so
/// a port picked is never taken, between the check and the listener's bind,
/// as the source port of some outgoing connection (the chaos test alone
/// opens a thousand). Seen as `AddrInUse` when ports came from port 0.
const LOW_PORT: u16 = 20_000;
const HIGH_PORT: u16 = 32_000;

/// A loopback port free at the time of asking, for a listener that must be
/// known before it binds (a node's own URL, a config file).
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` distinct free loopback ports, all held until every one is picked.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let mut held: Vec<std::net::TcpListener> = Vec::with_capacity(N);
    for _ in 0..N * 100 {
        if held.len() == N {
            break;
        }
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", next_ports(1))) {
            held.push(listener);
        }
    }
    assert_eq!(held.len(), N, "no {N} free ports in {LOW_PORT}-{HIGH_PORT}");
    std::array::from_fn(|i| held[i].local_addr().expect("reserved port").port())
}

/// The first of `count` consecutive loopback ports free at the time of
/// asking (a launcher puts node i on `base + i`).
pub fn free_run(count: u16) -> u16 {
    for _ in 0..100 {
        let base = next_ports(count);
        let held: Vec<_> = (0..count)
            .map_while(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == usize::from(count) {
            return base;
        }
    }
    panic!("no {count} consecutive free ports in {LOW_PORT}-{HIGH_PORT}");
}

/// The next `count` ports of the range, for this process: handed out in
/// turn from a start drawn per process, so parallel tests of one binary
/// never try the same port (a random pick each time did: two tests then
/// shared a listener port), and test binaries start apart.
fn next_ports(count: u16) -> u16 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // SplitMix64 of the process id and the time.
        let mut z = (u64::from(std::process::id()) << 32) ^ u64::from(nanos);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as u32
    });
    let span = u32::from(HIGH_PORT - LOW_PORT - count);
    let offset = start.wrapping_add(NEXT.fetch_add(u32::from(count), Ordering::Relaxed)) % span;
    LOW_PORT + offset as u16
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
