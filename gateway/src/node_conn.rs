//! One HTTP/1.1 connection from the gateway to a node: write a request,
//! read the response head, stream the response body back to the client.
//!
//! Each client connection keeps at most one idle node connection
//! ([`Reuse`]), HAProxy's model: a client almost always talks to one node,
//! so there is no shared pool to check out from and no cross-task hand-off.
//! The response body ([`NodeBody`]) reads straight from the socket and puts
//! the connection back when the body ends cleanly.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::Method;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use crate::body::BoxError;
use crate::state::CONNECT_TIMEOUT;
use crate::upstream::Upstream;
use crate::wire::{self, Chunked, Framing, ResponseHead, Step, WireError};

/// Read buffer of a node connection, and the unit it grows by.
const READ_CHUNK: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the node closed the connection before answering")]
    Closed,
    #[error(transparent)]
    Wire(#[from] WireError),
}

pub struct NodeConn {
    pub node: Arc<Upstream>,
    stream: TcpStream,
    buf: BytesMut,
    /// Has carried a request already: a failure before any answer may just
    /// mean the node closed it while idle.
    pub reused: bool,
}

impl NodeConn {
    pub async fn connect(node: &Arc<Upstream>) -> Result<NodeConn, NodeError> {
        Self::opened(node, node.dial()).await
    }

    /// A connection for a health check (to `check_port` when set).
    pub async fn connect_check(node: &Arc<Upstream>) -> Result<NodeConn, NodeError> {
        Self::opened(node, node.dial_check()).await
    }

    async fn opened(
        node: &Arc<Upstream>,
        dial: impl std::future::Future<Output = io::Result<TcpStream>>,
    ) -> Result<NodeConn, NodeError> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(NodeError::Connect(e)),
            Err(_) => return Err(NodeError::ConnectTimeout),
        };
        let _ = stream.set_nodelay(true);
        Ok(NodeConn {
            node: node.clone(),
            stream,
            buf: BytesMut::new(),
            reused: false,
        })
    }

    /// Writes all of `bytes`.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads until a whole response head has arrived.
    ///
    /// Waits for the socket to be readable before it takes a buffer: a long
    /// poll waits here for up to `pingInterval`, and a buffer reserved for
    /// that whole time would be 8 KiB per idle polling session.
    pub async fn read_head(&mut self, method: &Method) -> Result<ResponseHead, NodeError> {
        loop {
            if let Some(head) = wire::parse_response_head(&mut self.buf, method)? {
                return Ok(head);
            }
            if self.buf.is_empty() {
                // Drop spare capacity left by an earlier response.
                self.buf = BytesMut::new();
            }
            self.stream.readable().await?;
            self.buf.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.buf) {
                Ok(0) => return Err(NodeError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether an idle connection is still open: nothing, not even the
    /// node's FIN, waits to be read. (Tokio's readiness alone cannot tell:
    /// it stays set after the read that finished the last body.)
    fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        self.buf.is_empty()
            && matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// The socket and whatever was read past the response head (a relayed
    /// websocket's first frames).
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.buf)
    }
}

/// The idle node connection of one client connection.
#[derive(Clone, Default)]
pub struct Reuse(Arc<Mutex<Option<NodeConn>>>);

impl Reuse {
    /// The idle connection, if it goes to `node` and is still open.
    pub fn take(&self, node: &Arc<Upstream>) -> Option<NodeConn> {
        let conn = self.0.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        (Arc::ptr_eq(&conn.node, node) && conn.is_open()).then_some(conn)
    }

    fn put(&self, mut conn: NodeConn) {
        conn.reused = true;
        // Idle, it holds no buffer: what is left of the last read's
        // allocation goes back now, not when the next request comes.
        conn.buf = BytesMut::new();
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
    }
}

enum Decoding {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

/// A response body read from a node connection.
pub struct NodeBody {
    conn: Option<NodeConn>,
    decoding: Decoding,
    /// Where a cleanly finished connection goes back; `None`: close it.
    reuse: Option<Reuse>,
}

impl NodeBody {
    pub fn new(conn: NodeConn, head: &ResponseHead, reuse: Reuse) -> Self {
        let decoding = match head.framing {
            Framing::Empty => Decoding::Done,
            Framing::Length(n) => Decoding::Length(n),
            Framing::Chunked => Decoding::Chunked(Chunked::default()),
            Framing::UntilClose => Decoding::UntilClose,
        };
        let mut body = NodeBody {
            conn: Some(conn),
            decoding,
            reuse: head.reusable.then_some(reuse),
        };
        if matches!(body.decoding, Decoding::Done) {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        self.decoding = Decoding::Done;
        if let (Some(conn), Some(reuse)) = (self.conn.take(), self.reuse.take())
            && conn.buf.is_empty()
        {
            reuse.put(conn);
        }
    }

    /// Reads more from the node; `Ok(false)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        conn.buf.reserve(READ_CHUNK);
        match poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf) {
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n > 0)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The first `n` buffered bytes.
fn take(conn: &mut Option<NodeConn>, n: usize) -> Bytes {
    match conn.as_mut() {
        Some(conn) => conn.buf.split_to(n).freeze(),
        None => Bytes::new(),
    }
}

fn buffered(conn: &Option<NodeConn>) -> usize {
    conn.as_ref().map_or(0, |c| c.buf.len())
}

fn cut_short() -> BoxError {
    "the node closed the connection in the middle of a response body".into()
}

impl HttpBody for NodeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let have = buffered(&this.conn);
            let (data, finished) = match &mut this.decoding {
                Decoding::Done => return Poll::Ready(None),
                Decoding::Length(left) if have > 0 => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(have);
                    *left -= n as u64;
                    (Some(take(&mut this.conn, n)), *left == 0)
                }
                Decoding::Length(_) => (None, false),
                Decoding::Chunked(state) => {
                    let step = match this.conn.as_mut() {
                        Some(conn) => state.step(&mut conn.buf),
                        None => Ok(Step::Done),
                    };
                    match step {
                        Ok(Step::Data(n)) => {
                            state.took(n);
                            (Some(take(&mut this.conn, n)), false)
                        }
                        Ok(Step::Done) => (None, true),
                        Ok(Step::NeedMore) => (None, false),
                        Err(e) => {
                            this.conn = None;
                            this.decoding = Decoding::Done;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                }
                Decoding::UntilClose if have > 0 => (Some(take(&mut this.conn, have)), false),
                Decoding::UntilClose => (None, false),
            };
            if finished {
                this.finish();
            }
            match data {
                Some(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                None if finished => return Poll::Ready(None),
                None => {}
            }
            match this.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) if matches!(this.decoding, Decoding::UntilClose) => {
                    this.decoding = Decoding::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(false)) => {
                    this.conn = None;
                    this.decoding = Decoding::Done;
                    return Poll::Ready(Some(Err(cut_short())));
                }
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    this.decoding = Decoding::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoding, Decoding::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoding {
            Decoding::Done => SizeHint::with_exact(0),
            Decoding::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
