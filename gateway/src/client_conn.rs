//! One client connection of the public listener: read a request head, have
//! [`crate::proxy`] forward it, write the answer back, and again, until the
//! client closes, the keep-alive or header timeout ends it, or the gateway
//! shuts down (an idle connection closes at once, a busy one after its
//! answer).
//!
//! The gateway serves this side itself rather than through a general HTTP
//! server so a request costs one head parse and one forward, and so an idle
//! connection costs next to nothing: between requests, and while a long poll
//! waits on its node, a plain TCP connection holds no read buffer. It waits
//! for the socket to be readable before it takes one, as
//! [`crate::node_conn`] and [`crate::relay::run_sockets`] do. Over TLS the
//! reads go through the TLS stream.
//!
//! Requests are served one after another: pipelined requests wait in the
//! buffer for the answer before them. While a request waits for its node,
//! the connection is watched: a client that closes it ends the request.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client_wire::{self, BodyLength, HeadError, ResponseBody};
use crate::limits::BodyLimit;
use crate::proxy::{self, BodyError, ClientSide, Conn, Reply, ReplyBody};
use crate::relay::ClientStream;
use crate::state::State;
use crate::upstream::Snapshot;
use crate::wire::{self, Chunked, Step};

/// Room reserved for each read from a TLS client, and the size of the
/// writes a streamed answer is gathered into.
const READ_CHUNK: usize = 4 * 1024;
/// Largest read from a plain TCP client.
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    /// Every plain TCP client connection of a worker reads into this: the
    /// bytes are copied out before the task can yield.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; SCRATCH_BYTES]);
}
/// Header slots parsed on the stack; a config allowing more uses the heap.
const STACK_HEADERS: usize = 128;
/// Most bytes a client may send ahead (pipelined) while its request waits:
/// past this, the connection is no longer watched for a close.
const MAX_AHEAD: usize = 64 * 1024;
/// After a refused request, what the client still sends is read and
/// dropped for this long (and up to [`LINGER_BYTES`]) before the close, so
/// that the close does not reset the connection under the answer.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// Serves `io` until it closes.
pub async fn serve<S: ClientStream + 'static>(state: Arc<State>, conn: Conn, io: S) {
    let mut client = Client {
        io,
        buf: BytesMut::new(),
        body: Incoming::Done,
        limit: BodyLimit::new(0),
        continue_owed: false,
    };
    let end = loop {
        match serve_one(&state, &conn, &mut client).await {
            Next::Request => {}
            Next::Close => break End::Close,
            Next::Linger => break End::Linger,
            Next::Drop => break End::Drop,
            Next::Upgrade(upgraded) => {
                // What the client sent past its request head is the
                // websocket's first bytes.
                let early = std::mem::take(&mut client.buf);
                // A task of its own: this connection's future (1.5 KB)
                // ends here instead of living as long as the websocket,
                // and the relay's state is not part of every connection's.
                let io = client.io;
                state
                    .tasks
                    .spawn(async move { upgraded.relay(io, &early).await });
                return;
            }
        }
    };
    client.close(end).await;
}

/// What follows one request.
enum Next {
    Request,
    /// Close cleanly.
    Close,
    /// Close, reading what the client still sends for a while.
    Linger,
    /// Close at once (timeout, client gone, broken connection).
    Drop,
    Upgrade(Box<proxy::Upgraded>),
}

enum End {
    Close,
    Linger,
    Drop,
}

/// What the loop keeps of a request head once it is parsed.
struct Facts {
    len: usize,
    method: Method,
    http10: bool,
    keep_alive: bool,
    expect_continue: bool,
    body: BodyLength,
    upgrade: bool,
}

async fn serve_one<S: ClientStream>(
    state: &Arc<State>,
    conn: &Conn,
    client: &mut Client<S>,
) -> Next {
    let (timeout, max_bytes, max_headers, max_body) = {
        let limits = &state.snapshot().config.limits;
        (
            limits.header_read_timeout.get(),
            limits.max_header_bytes,
            limits.max_headers,
            limits.max_body_bytes,
        )
    };
    let waited = tokio::select! {
        biased;
        () = state.shutdown.cancelled() => return Next::Drop,
        waited = tokio::time::timeout(timeout, client.read_head(max_bytes, max_headers)) => waited,
    };
    match waited {
        Ok(Ok(())) => {}
        Ok(Err(HeadWait::Closed)) => return Next::Drop,
        Ok(Err(HeadWait::Refused(e))) => {
            state.metrics.rejected(e.reason());
            tracing::debug!(peer = %conn.peer, error = %e, "request refused");
            let reply = proxy::answer(e.status(), e.reason(), e.to_string(), serde_json::json!({}));
            let _ =
                Box::pin(client.write_reply(Reply::Answer(reply), &Method::GET, false, true)).await;
            return Next::Linger;
        }
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "request head not received in time");
            return Next::Drop;
        }
    }
    let snapshot = state.snapshot();
    let Ok((prepared, facts)) =
        prepare(state, &snapshot, conn, &client.buf, max_bytes, max_headers)
    else {
        // Parsed whole a moment ago: cannot fail now.
        return Next::Drop;
    };
    client.buf.advance(facts.len);
    client.start_body(&facts, max_body);
    let reply = match prepared {
        // Boxed, as the answer's writing below: inline, their state would
        // be in every connection's future, also while it waits for a
        // request (two idle connections per polling client: 3.7 KB each).
        Ok(request) => Box::pin(proxy::forward(state, conn, request, client)).await,
        Err(refused) => Reply::Answer(refused),
    };
    drop(snapshot);
    if let Reply::Upgrade(upgraded) = reply {
        let mut head = Vec::with_capacity(256);
        client_wire::encode_response_head(
            &mut head,
            StatusCode::SWITCHING_PROTOCOLS,
            &upgraded.headers(),
            ResponseBody::AsIs,
            None,
        );
        if client.write_all(&head).await.is_err() {
            return Next::Drop;
        }
        return Next::Upgrade(upgraded);
    }
    if let Reply::Gone = reply {
        tracing::debug!(peer = %conn.peer, "client left before its answer");
        return Next::Drop;
    }
    // A body left unread leaves no way to find the next request.
    let unread = !client.body_done();
    let close = !facts.keep_alive || unread || facts.upgrade || state.shutdown.is_cancelled();
    match Box::pin(client.write_reply(reply, &facts.method, facts.http10, close)).await {
        Ok(true) => Next::Request,
        Ok(false) if unread => Next::Linger,
        Ok(false) => Next::Close,
        Err(e) => {
            tracing::debug!(peer = %conn.peer, error = %e, "answer not delivered");
            Next::Drop
        }
    }
}

/// Parses the head at the start of `buf` and has the proxy prepare it.
fn prepare<'s>(
    state: &State,
    snapshot: &'s Snapshot,
    conn: &Conn,
    buf: &[u8],
    max_bytes: usize,
    max_headers: usize,
) -> Result<(Result<proxy::Request<'s>, proxy::Answer>, Facts), HeadError> {
    with_slots(
        max_headers,
        |slots| match client_wire::parse_request_head(buf, slots, max_bytes)? {
            Some(head) => {
                let facts = Facts {
                    len: head.len,
                    method: head.method.clone(),
                    http10: head.http10,
                    keep_alive: head.keep_alive,
                    expect_continue: head.expect_continue,
                    body: if head.upgrade {
                        BodyLength::None
                    } else {
                        head.body
                    },
                    upgrade: head.upgrade,
                };
                Ok((proxy::prepare(state, snapshot, conn, &head), facts))
            }
            None => Err(HeadError::Malformed("incomplete request head".into())),
        },
    )
}

/// Runs `f` with `max_headers` empty header slots, on the stack when few.
fn with_slots<'b, T>(
    max_headers: usize,
    f: impl for<'h> FnOnce(&'h mut [httparse::Header<'b>]) -> T,
) -> T {
    if max_headers <= STACK_HEADERS {
        let mut slots = [httparse::EMPTY_HEADER; STACK_HEADERS];
        f(&mut slots[..max_headers])
    } else {
        let mut slots = vec![httparse::EMPTY_HEADER; max_headers];
        f(&mut slots)
    }
}

/// Why no request head came.
enum HeadWait {
    /// The client closed (or broke) the connection.
    Closed,
    Refused(HeadError),
}

/// The request body still to be read.
enum Incoming {
    Done,
    Length(u64),
    Chunked(Chunked),
}

struct Client<S> {
    io: S,
    /// What was read and not yet used: empty, and without capacity, while
    /// the connection waits.
    buf: BytesMut,
    body: Incoming,
    limit: BodyLimit,
    /// `100 Continue` is owed before the body is first read.
    continue_owed: bool,
}

impl<S: ClientStream> Client<S> {
    /// Reads more into the buffer; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.is_empty() {
            // Whatever the last read left: given back before the wait.
            self.buf = BytesMut::new();
        }
        match self.io.socket() {
            // Into the worker's scratch buffer, then only what came is kept:
            // no room is reserved across a wait (readiness can be stale).
            Some(socket) => loop {
                socket.readable().await?;
                let read = SCRATCH.with(|scratch| {
                    let mut scratch = scratch.borrow_mut();
                    let n = socket.try_read(&mut scratch[..])?;
                    self.buf.extend_from_slice(&scratch[..n]);
                    Ok::<_, io::Error>(n)
                });
                match read {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            },
            None => {
                self.buf.reserve(READ_CHUNK);
                self.io.read_buf(&mut self.buf).await
            }
        }
    }

    /// Reads until the buffer starts with a whole request head.
    async fn read_head(&mut self, max_bytes: usize, max_headers: usize) -> Result<(), HeadWait> {
        loop {
            if !self.buf.is_empty() {
                let parsed = with_slots(max_headers, |slots| {
                    client_wire::parse_request_head(&self.buf, slots, max_bytes)
                        .map(|h| h.is_some())
                });
                match parsed {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) => return Err(HeadWait::Refused(e)),
                }
            }
            match self.fill().await {
                Ok(0) | Err(_) => return Err(HeadWait::Closed),
                Ok(_) => {}
            }
        }
    }

    fn start_body(&mut self, facts: &Facts, max_body: u64) {
        self.limit = BodyLimit::new(max_body);
        self.body = match facts.body {
            BodyLength::None => Incoming::Done,
            BodyLength::Length(n) => Incoming::Length(n),
            BodyLength::Chunked => Incoming::Chunked(Chunked::default()),
        };
        self.continue_owed = facts.expect_continue && !matches!(self.body, Incoming::Done);
    }

    fn body_done(&self) -> bool {
        matches!(self.body, Incoming::Done)
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Writes an answer; `Ok(true)` when the connection stays open.
    async fn write_reply(
        &mut self,
        reply: Reply,
        method: &Method,
        http10: bool,
        close: bool,
    ) -> io::Result<bool> {
        let connection = |close: bool| match (close, http10) {
            (true, _) => Some("close"),
            (false, true) => Some("keep-alive"),
            (false, false) => None,
        };
        let mut out = Vec::with_capacity(512);
        match reply {
            Reply::Answer(proxy::Answer { status, body }) => {
                let mut headers = HeaderMap::with_capacity(2);
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
                client_wire::encode_response_head(
                    &mut out,
                    status,
                    &headers,
                    ResponseBody::AsIs,
                    connection(close),
                );
                if !client_wire::bodyless(method, status) {
                    out.extend_from_slice(body.as_bytes());
                }
                self.write_all(&out).await?;
                Ok(!close)
            }
            Reply::Node {
                status,
                mut headers,
                mut body,
            } => {
                let bodyless = client_wire::bodyless(method, status);
                if let ReplyBody::Full(bytes) = &body
                    && !bodyless
                {
                    headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                }
                let framing = if bodyless || headers.contains_key(CONTENT_LENGTH) {
                    ResponseBody::AsIs
                } else if http10 {
                    ResponseBody::UntilClose
                } else {
                    ResponseBody::Chunked
                };
                let close = close || framing == ResponseBody::UntilClose;
                client_wire::encode_response_head(
                    &mut out,
                    status,
                    &headers,
                    framing,
                    connection(close),
                );
                drop(headers);
                if !bodyless {
                    self.write_body(&mut out, &mut body, framing).await?;
                }
                if !out.is_empty() {
                    self.io.write_all(&out).await?;
                }
                self.io.flush().await?;
                Ok(!close)
            }
            // Handled by the loop.
            Reply::Upgrade(_) | Reply::Gone => Ok(false),
        }
    }

    /// Streams a node's body after the head in `out` (sent with the first
    /// piece when that is at hand).
    async fn write_body(
        &mut self,
        out: &mut Vec<u8>,
        body: &mut ReplyBody,
        framing: ResponseBody,
    ) -> io::Result<()> {
        loop {
            let piece = match body.next().now_or_never() {
                Some(piece) => piece,
                None => {
                    if !out.is_empty() {
                        self.io.write_all(out).await?;
                        self.io.flush().await?;
                        out.clear();
                    }
                    body.next().await
                }
            };
            match piece {
                None => {
                    if framing == ResponseBody::Chunked {
                        out.extend_from_slice(wire::LAST_CHUNK);
                    }
                    return Ok(());
                }
                Some(Ok(data)) => {
                    let start = out.len();
                    out.extend_from_slice(&data);
                    if framing == ResponseBody::Chunked {
                        wire::frame_chunk(out, start);
                    }
                    if out.len() >= READ_CHUNK {
                        self.io.write_all(out).await?;
                        out.clear();
                    }
                }
                // The node cut its body short: so is the client's answer.
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
    }

    /// Ends the connection as `end` says.
    async fn close(mut self, end: End) {
        match end {
            End::Drop => {}
            End::Close => {
                let _ = self.io.shutdown().await;
            }
            End::Linger => {
                let _ = self.io.shutdown().await;
                let _ = tokio::time::timeout(LINGER_TIME, async {
                    let mut dropped = 0;
                    while dropped < LINGER_BYTES {
                        self.buf.clear();
                        match self.fill().await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => dropped += n,
                        }
                    }
                })
                .await;
            }
        }
    }
}

impl<S: ClientStream> ClientSide for Client<S> {
    async fn body_into(&mut self, out: &mut Vec<u8>) -> Result<bool, BodyError> {
        if self.continue_owed {
            self.continue_owed = false;
            if self.buf.is_empty() {
                self.write_all(client_wire::CONTINUE).await?;
            }
        }
        loop {
            let mut appended = false;
            match &mut self.body {
                Incoming::Done => return Ok(false),
                Incoming::Length(left) => {
                    if !self.buf.is_empty() {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(self.buf.len());
                        self.limit.take(n)?;
                        out.extend_from_slice(&self.buf[..n]);
                        self.buf.advance(n);
                        *left -= n as u64;
                        appended = true;
                        if *left == 0 {
                            self.body = Incoming::Done;
                            return Ok(false);
                        }
                    }
                }
                Incoming::Chunked(state) => loop {
                    match state.step(&mut self.buf)? {
                        Step::Data(n) => {
                            self.limit.take(n)?;
                            out.extend_from_slice(&self.buf[..n]);
                            self.buf.advance(n);
                            state.took(n);
                            appended = true;
                        }
                        Step::Done => {
                            self.body = Incoming::Done;
                            return Ok(false);
                        }
                        Step::NeedMore => break,
                    }
                },
            }
            if appended {
                return Ok(true);
            }
            if self.fill().await? == 0 {
                return Err(BodyError::Closed);
            }
        }
    }

    async fn gone(&mut self) {
        loop {
            if self.buf.len() > MAX_AHEAD {
                return std::future::pending().await;
            }
            match self.fill().await {
                Ok(0) | Err(_) => return,
                // Pipelined: kept for after this answer.
                Ok(_) => {}
            }
        }
    }
}
