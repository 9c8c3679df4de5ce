//! Byte-for-byte relaying of an upgraded connection (a websocket) between a
//! client and its node.
//!
//! Unlike `tokio::io::copy_bidirectional`, the client-to-node direction can
//! be asked to *flush*: to pass on, before anything else, every byte the
//! client has already sent. A polling request of the same session does that
//! before it is forwarded ([`crate::ordering`]), so the node sees a frame
//! the client sent before that request ahead of the request.
//!
//! On a websocket-only session the node's first frame is its open packet;
//! the relay can rewrite its sid ([`crate::open_packet`]) before anything
//! else goes down.
//!
//! Two loops, one contract. [`run_sockets`] (a plain TCP client, the usual
//! case) waits for readiness and reads into one buffer per worker thread, so
//! an idle websocket holds no buffer at all: bytes of its own only while a
//! slow side has not taken what was read for it. [`run`] serves any stream
//! (TLS) with a buffer per direction, as `copy_bidirectional` would.

use std::io;

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use stickyio_shared::connection_limit::Counted;

use crate::open_packet::{self, FirstFrame};
use crate::ordering::RelayHandle;

/// Buffer of each direction.
const BUFFER: usize = 8 * 1024;
/// Largest first frame read whole to rewrite its open packet.
const MAX_FIRST_FRAME: usize = 16 * 1024;

/// Makes the client's sid from the node's, for a websocket-only session.
pub type TagSid = Box<dyn FnOnce(&str) -> String + Send>;

/// A client connection: any stream, and the plain TCP socket under it when
/// there is one, for readiness-driven I/O.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// `None` over TLS.
    fn socket(&self) -> Option<&TcpStream>;
}

impl ClientStream for Counted<TcpStream> {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self.get_ref())
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<Counted<TcpStream>> {
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

/// Relays `client` with [`run_sockets`] when it is a plain socket, [`run`]
/// otherwise. `client_early` is what the client sent past its upgrade
/// request.
pub async fn run_client<C: ClientStream>(
    client: C,
    client_early: &[u8],
    node: TcpStream,
    early: BytesMut,
    flush: Option<RelayHandle>,
    tag: Option<TagSid>,
) -> io::Result<(u64, u64)> {
    match client.socket() {
        Some(socket) => run_sockets(socket, client_early, node, early, flush, tag).await,
        None => run(client, client_early, node, early, flush, tag).await,
    }
}

/// Relays until both directions have ended; returns the bytes sent up (client
/// to node) and down. `early` is what the node sent right after its `101`.
pub async fn run<C>(
    client: C,
    client_early: &[u8],
    node: TcpStream,
    early: BytesMut,
    flush: Option<RelayHandle>,
    tag: Option<TagSid>,
) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut node_r, mut node_w) = node.into_split();
    let up = async {
        let mut flush = flush;
        let mut buf = vec![0u8; BUFFER];
        let mut sent = client_early.len() as u64;
        node_w.write_all(client_early).await?;
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
        let mut early = early;
        let mut sent = 0u64;
        if let Some(tag) = tag {
            sent += tag_first_frame(&mut node_r, &mut client_w, &mut early, tag).await?;
        }
        sent += early.len() as u64;
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

/// Reads the node's first frame whole and sends it down with the open
/// packet's sid replaced by `tag`; leaves any later bytes in `pending`.
/// Returns the bytes sent.
async fn tag_first_frame<R, W>(
    node: &mut R,
    client: &mut W,
    pending: &mut BytesMut,
    tag: TagSid,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut tag = Some(tag);
    loop {
        let step = open_packet::rewrite_first_frame(pending, MAX_FIRST_FRAME, |sid| {
            tag.take().map_or_else(|| sid.to_owned(), |tag| tag(sid))
        });
        match step {
            FirstFrame::Open(open, used) => {
                client.write_all(&open.bytes).await?;
                let _ = pending.split_to(used);
                return Ok(open.bytes.len() as u64);
            }
            FirstFrame::Other => return Ok(0),
            FirstFrame::NeedMore => {
                pending.reserve(BUFFER);
                if node.read_buf(pending).await? == 0 {
                    return Ok(0);
                }
            }
        }
    }
}

/// Largest read of the socket loop: the worker thread's one buffer.
const SHARED_BUFFER: usize = 16 * 1024;

thread_local! {
    /// Every relay of a worker reads into this: a worker runs one task at a
    /// time, and a read is written on (or kept) before the task yields.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; SHARED_BUFFER]);
}

/// One direction of [`run_sockets`].
#[derive(Default)]
struct Direction {
    /// Read but not yet taken by the other side: empty while it keeps up.
    pending: Vec<u8>,
    /// The source has ended and the destination's write side is shut.
    done: bool,
    sent: u64,
}

impl Direction {
    /// Reads what `from` has and writes what `to` takes now; keeps the rest.
    /// `Ok(false)` at end of stream.
    fn pass(&mut self, from: &TcpStream, to: &TcpStream) -> io::Result<bool> {
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            let n = match from.try_read(&mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            };
            let written = match to.try_write(&buf[..n]) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            self.sent += written as u64;
            self.pending.extend_from_slice(&buf[written..n]);
            Ok(true)
        })
    }

    /// Writes what is pending once `to` is writable.
    async fn drain(&mut self, to: &TcpStream) -> io::Result<()> {
        while !self.pending.is_empty() {
            to.writable().await?;
            match to.try_write(&self.pending) {
                Ok(w) => {
                    self.pending.drain(..w);
                    self.sent += w as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        // Gives the memory back: an idle relay keeps no buffer.
        self.pending = Vec::new();
        Ok(())
    }
}

/// [`run`] for a plain TCP client: readiness-driven, see the module doc.
/// `client_early` is what the client sent past the upgrade request.
pub async fn run_sockets(
    client: &TcpStream,
    client_early: &[u8],
    node: TcpStream,
    early: BytesMut,
    flush: Option<RelayHandle>,
    tag: Option<TagSid>,
) -> io::Result<(u64, u64)> {
    let (mut up, mut down) = (Direction::default(), Direction::default());
    up.pending.extend_from_slice(client_early);
    down.pending.extend_from_slice(&early);
    drop(early);
    if let Some(tag) = tag {
        let mut pending = BytesMut::from(&down.pending[..]);
        down.sent += tag_first_frame_sockets(&node, client, &mut pending, tag).await?;
        down.pending = pending.to_vec();
    }
    let mut flush = flush;
    while !(up.done && down.done) {
        let requests = async {
            match flush.as_mut() {
                Some(handle) => handle.requests.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            Some(ack) = requests => {
                up.drain(&node).await?;
                // Bounded, as in `drain`: a client streaming faster than the
                // node takes it must not hold the flushing request forever.
                for _ in 0..64 {
                    if up.done {
                        break;
                    }
                    let before = up.sent;
                    if !up.pass(client, &node)? {
                        up.done = true;
                        let _ = node.shutdown_write();
                        break;
                    }
                    if up.sent == before && up.pending.is_empty() {
                        // Nothing was waiting: everything sent is passed on.
                        break;
                    }
                    up.drain(&node).await?;
                }
                let _ = ack.send(());
            }
            result = up.drain(&node), if !up.pending.is_empty() => result?,
            result = down.drain(client), if !down.pending.is_empty() => result?,
            ready = client.readable(), if !up.done && up.pending.is_empty() => {
                ready?;
                if !up.pass(client, &node)? {
                    up.done = true;
                    let _ = node.shutdown_write();
                }
            }
            ready = node.readable(), if !down.done && down.pending.is_empty() => {
                ready?;
                if !down.pass(&node, client)? {
                    down.done = true;
                    let _ = client.shutdown_write();
                }
            }
        }
    }
    Ok((up.sent, down.sent))
}

/// [`tag_first_frame`] on sockets.
async fn tag_first_frame_sockets(
    node: &TcpStream,
    client: &TcpStream,
    pending: &mut BytesMut,
    tag: TagSid,
) -> io::Result<u64> {
    let mut tag = Some(tag);
    loop {
        let step = open_packet::rewrite_first_frame(pending, MAX_FIRST_FRAME, |sid| {
            tag.take().map_or_else(|| sid.to_owned(), |tag| tag(sid))
        });
        match step {
            FirstFrame::Open(open, used) => {
                let _ = pending.split_to(used);
                let mut out = Direction {
                    pending: open.bytes,
                    ..Direction::default()
                };
                out.drain(client).await?;
                return Ok(out.sent);
            }
            FirstFrame::Other => return Ok(0),
            FirstFrame::NeedMore => {
                pending.reserve(BUFFER);
                node.readable().await?;
                match node.try_read_buf(pending) {
                    Ok(0) => return Ok(0),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// Shuts the write half of a socket (a `&TcpStream` has no `AsyncWrite`
/// shutdown of its own).
trait ShutdownWrite {
    fn shutdown_write(&self) -> io::Result<()>;
}

impl ShutdownWrite for TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write)
    }
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
