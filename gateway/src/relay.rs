//! Byte-for-byte relaying of an upgraded connection (a websocket) between a
//! client and its node.
//!
//! Unlike `tokio::io::copy_bidirectional`, the client-to-node direction can
//! be asked to *flush*: to pass on, before anything else, every byte the
//! client has already sent. A polling request of the same session does that
//! before it is forwarded ([`crate::ordering`]), so the node sees a frame
//! the client sent before that request ahead of the request.

use std::io;

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ordering::RelayHandle;

/// Buffer of each direction.
const BUFFER: usize = 8 * 1024;

/// Relays until both directions have ended; returns the bytes sent up (client
/// to node) and down. `early` is what the node sent right after its `101`.
pub async fn run<C>(
    client: C,
    node: TcpStream,
    early: BytesMut,
    flush: Option<RelayHandle>,
) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut node_r, mut node_w) = node.into_split();
    let up = async {
        let mut flush = flush;
        let mut buf = vec![0u8; BUFFER];
        let mut sent = 0u64;
        loop {
            let requests = async {
                match flush.as_mut() {
                    Some(handle) => handle.requests.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(ack) = requests => {
                    let (n, open) = drain(&mut client_r, &mut node_w, &mut buf).await?;
                    sent += n;
                    let _ = ack.send(());
                    if !open {
                        break;
                    }
                }
                read = client_r.read(&mut buf) => {
                    let n = read?;
                    if n == 0 {
                        break;
                    }
                    node_w.write_all(&buf[..n]).await?;
                    sent += n as u64;
                }
            }
        }
        node_w.shutdown().await?;
        Ok::<_, io::Error>(sent)
    };
    let down = async {
        let mut sent = early.len() as u64;
        if !early.is_empty() {
            client_w.write_all(&early).await?;
        }
        let mut buf = vec![0u8; BUFFER];
        loop {
            let n = node_r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            client_w.write_all(&buf[..n]).await?;
            sent += n as u64;
        }
        client_w.shutdown().await?;
        Ok::<_, io::Error>(sent)
    };
    tokio::try_join!(up, down)
}

/// Passes on what the client has sent and the gateway has not read yet,
/// without waiting for more. Returns the bytes passed and whether the client
/// side is still open.
async fn drain<R, W>(from: &mut R, to: &mut W, buf: &mut [u8]) -> io::Result<(u64, bool)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut sent = 0u64;
    // Bounded: a client streaming faster than the node takes it must not
    // keep the flushing request waiting forever.
    for _ in 0..64 {
        match from.read(buf).now_or_never() {
            None => return Ok((sent, true)),
            Some(Ok(0)) => return Ok((sent, false)),
            Some(Ok(n)) => {
                to.write_all(&buf[..n]).await?;
                sent += n as u64;
            }
            Some(Err(e)) => return Err(e),
        }
    }
    Ok((sent, true))
}
