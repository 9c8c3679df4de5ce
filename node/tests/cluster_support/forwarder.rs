//! A TCP forwarder that stands for the network between two nodes, so a test
//! can cut one link while both nodes stay alive, and restore it.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

pub struct Forwarder {
    /// Dial this instead of the target.
    pub url: String,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Forwards a new loopback port to `target` (`http://host:port`).
    pub async fn start(target: &str) -> Forwarder {
        let target: SocketAddr = target
            .trim_start_matches("http://")
            .parse()
            .expect("a loopback URL");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a forwarder");
        let url = format!(
            "http://{}",
            listener.local_addr().expect("forwarder address")
        );
        let (cut, _) = watch::channel(false);
        let task = tokio::spawn(forward(listener, target, cut.clone()));
        Forwarder { url, cut, task }
    }

    /// Closes every forwarded connection and refuses new ones.
    pub fn sever(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(listener: TcpListener, target: SocketAddr, cut: watch::Sender<bool>) {
    // Owned here, so aborting the task closes every connection too.
    let mut connections = JoinSet::new();
    while let Ok((mut inbound, _)) = listener.accept().await {
        while connections.try_join_next().is_some() {}
        if *cut.borrow() {
            continue;
        }
        let mut severed = cut.subscribe();
        connections.spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = severed.wait_for(|cut| *cut) => {}
            }
        });
    }
}
