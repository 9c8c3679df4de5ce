//! A TCP forwarder that stands for the network between two nodes, so a test
//! can cut one link, or stall it, while both nodes stay alive.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

const RECV_BUFFER: u32 = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Open,
    /// Connections stay open but no byte moves: a peer too slow to read.
    Stalled,
    /// Every connection is closed and new ones are refused.
    Severed,
}

pub struct Forwarder {
    /// Dial this instead of the target.
    pub url: String,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Forwards a new loopback port to `target` (`http://host:port`).
    pub async fn start(target: &str) -> Forwarder {
        let target: SocketAddr = target
            .trim_start_matches("http://")
            .parse()
            .expect("a loopback URL");
        // A small receive buffer (inherited by accepted connections, and
        // without autotuning) so that a stall backs up into the sender soon.
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.set_recv_buffer_size(RECV_BUFFER).expect("SO_RCVBUF");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind a forwarder");
        let listener = socket.listen(128).expect("listen");
        let url = format!(
            "http://{}",
            listener.local_addr().expect("forwarder address")
        );
        let (mode, _) = watch::channel(Mode::Open);
        let task = tokio::spawn(forward(listener, target, mode.clone()));
        Forwarder { url, mode, task }
    }

    pub fn sever(&self) {
        self.mode.send_replace(Mode::Severed);
    }

    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stalled);
    }

    pub fn restore(&self) {
        self.mode.send_replace(Mode::Open);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(listener: TcpListener, target: SocketAddr, mode: watch::Sender<Mode>) {
    // Owned here, so aborting the task closes every connection too.
    let mut connections = JoinSet::new();
    while let Ok((inbound, _)) = listener.accept().await {
        while connections.try_join_next().is_some() {}
        if *mode.borrow() == Mode::Severed {
            continue;
        }
        let mut severed = mode.subscribe();
        let (up, down) = (mode.subscribe(), mode.subscribe());
        connections.spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::select! {
                () = pipe(in_read, out_write, up) => {}
                () = pipe(out_read, in_write, down) => {}
                _ = severed.wait_for(|m| *m == Mode::Severed) => {}
            }
        });
    }
}

/// Copies one direction, reading nothing while stalled.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        if mode.wait_for(|m| *m == Mode::Open).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
