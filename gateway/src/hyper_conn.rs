//! EXPERIMENT (issue #14, design 1, branch `s5-a-hyperconn`, not for
//! merging): the node side of plain requests on hyper's connection-level
//! HTTP/1 client instead of the gateway's own framing (`node_conn.rs`).
//!
//! One [`HyperConn`] (hyper's `SendRequest` and its `Connection`) per client
//! connection, kept idle in a [`HyperReuse`] slot between requests, no
//! pool. The `Connection` future is never spawned: it is polled in the
//! client connection's own task, beside the response future while the
//! request goes out and the head comes back ([`HyperConn::send`]), then
//! by the response body as hyper's server pulls it ([`DrivenBody`]).
//!
//! The node socket is wrapped in [`Signalled`], which notes the first
//! successful write of a request: the session's turn ends once the request
//! head is written, not when the answer comes.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::{Body, BoxError};
use crate::node_conn::{NodeConn, NodeError};
use crate::upstream::Upstream;

/// The node socket; sets `written` on every successful write.
pub struct Signalled {
    stream: TcpStream,
    written: Arc<AtomicBool>,
}

impl Signalled {
    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.written.store(true, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Signalled {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Signalled {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

type Driver = Connection<TokioIo<Signalled>, Body>;

/// hyper's client connection to one node.
pub struct HyperConn {
    pub node: Arc<Upstream>,
    send: SendRequest<Body>,
    conn: Driver,
    /// The connection future has completed: the connection is gone.
    ended: bool,
    written: Arc<AtomicBool>,
    /// Has carried a request already.
    pub reused: bool,
}

/// Why [`HyperConn::send`] gave no response.
// The request is given back whole, unboxed: this path is not hot.
#[allow(clippy::large_enum_variant)]
pub enum SendError {
    /// The connection was closed before any of the request went out: here
    /// it is back, to send on a new connection.
    NotSent(Request<Body>),
    Failed(hyper::Error),
}

impl HyperConn {
    pub async fn connect(node: &Arc<Upstream>) -> Result<HyperConn, NodeError> {
        let (stream, _) = NodeConn::connect(node).await?.into_parts();
        let written = Arc::new(AtomicBool::new(false));
        let io = TokioIo::new(Signalled {
            stream,
            written: written.clone(),
        });
        let (send, conn) = http1::handshake(io)
            .await
            .map_err(|e| NodeError::Io(io::Error::other(e)))?;
        Ok(HyperConn {
            node: node.clone(),
            send,
            conn,
            ended: false,
            written,
            reused: false,
        })
    }

    /// Drives the connection; `true` once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.ended && Pin::new(&mut self.conn).poll(cx).is_ready() {
            self.ended = true;
        }
        self.ended
    }

    /// Sends `req` and waits for the response head, driving the connection
    /// meanwhile; `on_written` runs once the first bytes of the request are
    /// written to the node.
    pub async fn send(
        &mut self,
        req: Request<Body>,
        on_written: &mut (dyn FnMut() + Send),
    ) -> Result<Response<Incoming>, SendError> {
        // An idle connection the node closed: seen by polling it once.
        let ready = poll_fn(|cx| {
            let ended = self.drive(cx);
            Poll::Ready(!ended && matches!(self.send.poll_ready(cx), Poll::Ready(Ok(()))))
        })
        .await;
        if !ready {
            return Err(SendError::NotSent(req));
        }
        self.written.store(false, Ordering::Relaxed);
        let HyperConn {
            send,
            conn,
            ended,
            written,
            ..
        } = self;
        let mut response = pin!(send.try_send_request(req));
        let mut signalled = false;
        let result = poll_fn(|cx| {
            if !*ended && Pin::new(&mut *conn).poll(cx).is_ready() {
                *ended = true;
            }
            if !signalled && written.load(Ordering::Relaxed) {
                signalled = true;
                on_written();
            }
            response.as_mut().poll(cx)
        })
        .await;
        if !signalled {
            on_written();
        }
        result.map_err(|mut e| match e.take_message() {
            Some(req) => SendError::NotSent(req),
            None => SendError::Failed(e.into_error()),
        })
    }
}

/// The idle hyper connection of one client connection.
#[derive(Clone, Default)]
pub struct HyperReuse(Arc<Mutex<Option<HyperConn>>>);

impl HyperReuse {
    /// The idle connection, if it goes to `node`.
    pub fn take(&self, node: &Arc<Upstream>) -> Option<HyperConn> {
        let conn = self.0.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        Arc::ptr_eq(&conn.node, node).then_some(conn)
    }

    fn put(&self, mut conn: HyperConn) {
        conn.reused = true;
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
    }
}

/// A response body from hyper's client, which drives the connection as it
/// is read and puts it back into the slot once the body has ended.
pub struct DrivenBody {
    body: Incoming,
    conn: Option<HyperConn>,
    reuse: HyperReuse,
}

impl DrivenBody {
    pub fn new(body: Incoming, conn: HyperConn, reuse: HyperReuse) -> Self {
        let mut driven = DrivenBody {
            body,
            conn: Some(conn),
            reuse,
        };
        if driven.body.is_end_stream() {
            driven.release();
        }
        driven
    }

    fn release(&mut self) {
        if let Some(conn) = self.conn.take()
            && !conn.ended
        {
            self.reuse.put(conn);
        }
    }
}

impl HttpBody for DrivenBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(conn) = this.conn.as_mut() {
            conn.drive(cx);
        }
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.body.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            Some(Err(_)) => this.conn = None,
        }
        Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
