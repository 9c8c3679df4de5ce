//! The public listener's request handling: route, take the session's turn,
//! forward, and hand the answer back to the client connection
//! ([`crate::client_conn`]), which writes it. Plain requests and upgrades
//! take this one path; only the answer differs (a streamed body, or a
//! relayed connection).
//!
//! [`prepare`] decides everything the request head tells, while the head
//! still borrows the connection's read buffer: the route, and the head the
//! node gets, written straight from the client's headers. [`forward`] then
//! streams the body (read by the connection, see [`ClientSide`]) and waits
//! for the node, watching for the client to leave.
//!
//! Nothing is buffered whole. A request without a body that fails to
//! *connect* is retried on the next rendezvous choice (after ejecting the
//! dead node), so a node that just died costs a client nothing; a request
//! that reached a node is never retried, except on a kept-alive connection
//! the node had closed before the request came.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use stickyio_shared::placement::canonical_ip;

use crate::body::{self, BoxError};
use crate::client_ip::{client_ip, is_trusted};
use crate::client_wire::{BodyLength, RequestHead};
use crate::engineio::EngineQuery;
use crate::forwarding::{Forwarding, NODE_HEADER, NodeHead, encode_node_head, rewrite_response};
use crate::limits::{self, TooLarge};
use crate::node_conn::{NodeBody, NodeConn, NodeError, Reuse};
use crate::open_packet;
use crate::ordering::Turn;
use crate::relay::{self, ClientStream};
use crate::router::{self, Reason, Route};
use crate::sniff::{CloseObserver, Observed, Watch};
use crate::state::State;
use crate::upstream::{Snapshot, Transition, Upstream};
use crate::wire::{self, RequestBody, ResponseHead, WireError};

/// One client connection's context.
pub struct Conn {
    pub peer: SocketAddr,
    /// Arrived over TLS: told to the node as `proto=https`.
    pub tls: bool,
    /// The connection's idle node connection, for the next request.
    pub reuse: Reuse,
}

/// The client connection as the forwarding sees it: where the request body
/// comes from, and whether the client is still there.
pub trait ClientSide: Send {
    /// Appends the next bytes of the request body (decoded) to `out`;
    /// `Ok(false)` once the body is complete.
    fn body_into(
        &mut self,
        out: &mut Vec<u8>,
    ) -> impl Future<Output = Result<bool, BodyError>> + Send;
    /// Resolves once the client has closed the connection.
    fn gone(&mut self) -> impl Future<Output = ()> + Send;
}

/// Why the request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    #[error("the client closed the connection in the middle of the body")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad chunked body: {0}")]
    Chunked(#[from] WireError),
}

/// The gateway's own JSON answer.
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

/// What the client connection writes back.
// One per request, moved once: boxing the node's answer would cost an
// allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    Answer(Answer),
    /// The node's answer, headers rewritten for the client.
    Node {
        status: StatusCode,
        headers: HeaderMap,
        body: ReplyBody,
    },
    /// A `101`: answer it, then relay.
    Upgrade(Box<Upgraded>),
    /// The client left before the answer came; the node's request is dropped.
    Gone,
}

/// A node's response body on its way to the client.
pub enum ReplyBody {
    Node(NodeBody),
    /// A session's long poll, watched for a close packet.
    Watched(Observed<NodeBody, CloseObserver>),
    /// Read whole (a route-tagged handshake).
    Full(Bytes),
}

impl ReplyBody {
    /// The next piece; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<Bytes, BoxError>> {
        let frame = match self {
            ReplyBody::Node(body) => body.frame().await,
            ReplyBody::Watched(body) => body.frame().await,
            ReplyBody::Full(bytes) if bytes.is_empty() => None,
            ReplyBody::Full(bytes) => return Some(Ok(std::mem::take(bytes))),
        };
        match frame? {
            Ok(frame) => Some(Ok(frame.into_data().unwrap_or_default())),
            Err(e) => Some(Err(e)),
        }
    }
}

/// A request ready to go: routed, its node head written.
pub struct Request<'s> {
    method: Method,
    query: EngineQuery,
    route: Route<'s>,
    /// The node's request head, before the sid is rewritten into it.
    head: Vec<u8>,
    framing: RequestBody,
    upgrade: bool,
}

/// Routes a parsed request and writes its node head. A request refused
/// here (bad sid, no node, declared body too large) gets its answer.
pub fn prepare<'s>(
    state: &State,
    snapshot: &'s Snapshot,
    conn: &Conn,
    head: &RequestHead<'_, '_>,
) -> Result<Request<'s>, Answer> {
    let config = &snapshot.config;
    let peer_ip = canonical_ip(conn.peer.ip());
    let peer_trusted = is_trusted(peer_ip, &config.trusted_proxies);
    let ip = client_ip(peer_ip, head.headers, &config.trusted_proxies);
    let query = EngineQuery::of_target(head.target);
    let session = match query.sid.as_deref().map(|sid| state.route_keys.open(sid)) {
        None => None,
        Some(Ok(tagged)) => Some(tagged),
        Some(Err(e)) => {
            state.metrics.rejected("invalid_sid");
            tracing::debug!(peer = %conn.peer, error = %e, "request refused: bad sid");
            return Err(answer(
                StatusCode::BAD_REQUEST,
                "invalid_sid",
                e.to_string(),
                json!({}),
            ));
        }
    };
    let route = match &session {
        Some(tagged) => router::session(snapshot, ip, state.session_node(snapshot, tagged)),
        None => router::route(snapshot, ip),
    };
    let Some(first) = route.node() else {
        state.metrics.rejected("no_healthy_node");
        return Err(answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_node",
            route.reason.to_string(),
            json!({ "client_key": route.key.to_string() }),
        ));
    };
    if let Reason::FailOpen { .. } = route.reason {
        state.metrics.fail_open_requests().inc();
    }
    let max_body = config.limits.max_body_bytes;
    if !head.upgrade && limits::declared_too_large(head.body, max_body) {
        state.metrics.rejected("body_too_large");
        return Err(too_large(max_body));
    }
    let framing = match (head.upgrade, head.body) {
        (true, _) | (false, BodyLength::None) => RequestBody::None,
        (false, BodyLength::Length(_)) => RequestBody::Length,
        (false, BodyLength::Chunked) => RequestBody::Chunked,
    };
    // Nodes see only their own sids.
    let target = match (&session, &query.sid) {
        (Some(tagged), Some(sid)) => with_node_sid(head.target, sid, &tagged.node_sid),
        _ => [head.target, "", ""],
    };
    let node_head = NodeHead {
        method: &head.method,
        target,
        framing,
        upgrade: head.upgrade,
        // The first frame of a websocket-only session carries the sid the
        // gateway rewrites: it must not be compressed.
        no_extensions: head.upgrade && query.engine_io && query.sid.is_none(),
        default_host: Some(first.addr.as_str()),
    };
    let forwarding = Forwarding {
        peer: peer_ip,
        peer_trusted,
        proto: if conn.tls { "https" } else { "http" },
    };
    let mut out = Vec::with_capacity(512);
    encode_node_head(&mut out, &node_head, head.headers, forwarding);
    Ok(Request {
        method: head.method.clone(),
        query,
        route,
        head: out,
        framing,
        upgrade: head.upgrade,
    })
}

/// `target` cut around the value of its first `sid=<sid>` parameter,
/// `node_sid` in its place.
fn with_node_sid<'a>(target: &'a str, sid: &str, node_sid: &'a str) -> [&'a str; 3] {
    let Some(start) = target
        .match_indices("sid=")
        .filter(|(at, _)| matches!(target.as_bytes().get(at.wrapping_sub(1)), Some(b'?' | b'&')))
        .map(|(at, _)| at + "sid=".len())
        .find(|at| target[*at..].starts_with(sid))
    else {
        return [target, "", ""];
    };
    [&target[..start], node_sid, &target[start + sid.len()..]]
}

/// Forwards a prepared request: waits for the session's turn, sends head
/// and body, and gives back the node's answer.
pub async fn forward<C: ClientSide>(
    state: &Arc<State>,
    conn: &Conn,
    req: Request<'_>,
    client: &mut C,
) -> Reply {
    let limits = &state.snapshot().config.limits;
    // The session's place in line is taken before anything can await.
    let turn = match &req.query.sid {
        Some(sid) => Some(state.order.enter(sid).await),
        None => None,
    };
    let exchange = Exchange {
        state,
        reuse: &conn.reuse,
        max_body: limits.max_body_bytes,
        idle: limits.idle_timeout.get(),
        handshake: req.query.engine_io && req.query.sid.is_none(),
        handshake_timeout: limits.handshake_timeout.get(),
    };
    exchange.forward(req, client, turn).await
}

struct Exchange<'a> {
    state: &'a Arc<State>,
    reuse: &'a Reuse,
    max_body: u64,
    idle: Duration,
    /// An Engine.IO handshake: answered at once by a working node.
    handshake: bool,
    handshake_timeout: Duration,
}

/// Why one attempt at a node failed.
enum Failed {
    /// Nothing reached the node: the next candidate may take the request.
    Connect(String),
    /// The answer to give the client.
    Answer(Answer),
    /// The client left: the request is dropped.
    Gone,
}

/// The rest of the request body, still with the client.
struct ClientBody<'c, C> {
    client: &'c mut C,
    /// Body bytes are still to be read.
    pending: bool,
    framing: RequestBody,
    /// A session's `POST`, watched for a close packet.
    watch: Option<Watch<CloseObserver>>,
}

impl<C: ClientSide> ClientBody<'_, C> {
    /// Appends the next piece of the body to `out`, framed for the node.
    async fn next(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        let start = out.len();
        let more = self.client.body_into(out).await?;
        self.pending = more;
        if let Some(watch) = self.watch.as_mut() {
            watch.see(&out[start..]);
            if !more {
                watch.ended();
            }
        }
        if self.framing == RequestBody::Chunked {
            wire::frame_chunk(out, start);
            if !more {
                out.extend_from_slice(wire::LAST_CHUNK);
            }
        }
        Ok(())
    }
}

impl Exchange<'_> {
    async fn forward<C: ClientSide>(
        &self,
        req: Request<'_>,
        client: &mut C,
        mut turn: Option<Turn>,
    ) -> Reply {
        let Request {
            method,
            query,
            route,
            mut head,
            framing,
            upgrade,
        } = req;
        let pinned = route.reason == Reason::Session;
        let watch = match (&query.sid, method == Method::POST) {
            (Some(sid), true) => Some(Watch::new(CloseObserver {
                pins: self.state.pins.clone(),
                sid: sid.clone(),
            })),
            _ => None,
        };
        let mut body = ClientBody {
            client,
            pending: framing != RequestBody::None,
            framing,
            watch,
        };
        // The body's first piece (a whole polling payload, usually) goes in
        // the head's write: one system call instead of two.
        if body.pending
            && let Err(e) = body.next(&mut head).await
        {
            return Reply::Answer(self.body_failed(&e));
        }
        let mut errors = Vec::new();
        let bodyless = !body.pending && framing == RequestBody::None;
        for upstream in route.candidates() {
            let retryable = bodyless && !pinned;
            let outgoing = Outgoing {
                method: &method,
                head: &head,
            };
            match self
                .attempt(upstream, &outgoing, &mut body, &mut turn, retryable)
                .await
            {
                Ok((conn, response)) => {
                    return if upgrade && response.status == StatusCode::SWITCHING_PROTOCOLS {
                        Reply::Upgrade(Box::new(Upgraded {
                            state: self.state.clone(),
                            upstream: upstream.clone(),
                            query,
                            conn,
                            head: response,
                        }))
                    } else {
                        self.respond(upstream, &query, &method, conn, response)
                            .await
                    };
                }
                Err(Failed::Answer(answer)) => return Reply::Answer(answer),
                Err(Failed::Gone) => return Reply::Gone,
                Err(Failed::Connect(error)) if retryable => errors.push(error),
                Err(Failed::Connect(error)) => {
                    // The session lives only there, or the body went with the attempt.
                    return Reply::Answer(answer(
                        StatusCode::BAD_GATEWAY,
                        "node_unreachable",
                        error,
                        json!({ "node": upstream.name }),
                    ));
                }
            }
        }
        Reply::Answer(unreachable(self.state, &errors))
    }

    /// Sends the request to one node and reads its response head.
    async fn attempt<C: ClientSide>(
        &self,
        upstream: &Arc<Upstream>,
        outgoing: &Outgoing<'_>,
        body: &mut ClientBody<'_, C>,
        turn: &mut Option<Turn>,
        retryable: bool,
    ) -> Result<(NodeConn, ResponseHead), Failed> {
        upstream.metrics.requests.inc();
        // A handshake left unanswered goes to the next choice: the node
        // accepts connections but does not work (frozen, or stuck).
        let redispatch = retryable && self.handshake;
        let limit = if redispatch {
            self.handshake_timeout
        } else {
            self.idle
        };
        let mut conn = match self.reuse.take(upstream) {
            Some(conn) => conn,
            None => self.connect(upstream).await?,
        };
        let sent = tokio::time::timeout(limit, async {
            loop {
                match self.exchange(&mut conn, outgoing, body, turn).await {
                    // A kept-alive connection the node closed while idle:
                    // nothing of this request was taken, so send it afresh.
                    Err(Exchanged::Stale) if conn.reused => {
                        conn = self.connect(upstream).await?;
                    }
                    Err(Exchanged::Stale) => {
                        return Err(self.node_failed(upstream, &NodeError::Closed));
                    }
                    Err(Exchanged::Failed(failed)) => return Err(failed),
                    Ok(head) => return Ok(head),
                }
            }
        })
        .await;
        match sent {
            Ok(Ok(response)) => Ok((conn, response)),
            Ok(Err(failed)) => Err(failed),
            Err(_) if redispatch => {
                upstream.metrics.upstream_errors.inc();
                if upstream.eject() == Transition::Down {
                    tracing::warn!(node = %upstream.name, waited = ?limit, "node ejected: handshake unanswered");
                }
                Err(Failed::Connect(format!(
                    "{} ({}) did not answer the handshake within {limit:?}",
                    upstream.name, upstream.addr
                )))
            }
            Err(_) => {
                upstream.metrics.upstream_errors.inc();
                Err(Failed::Answer(answer(
                    StatusCode::GATEWAY_TIMEOUT,
                    "node_timeout",
                    format!("{} did not answer within {limit:?}", upstream.name),
                    json!({ "node": upstream.name }),
                )))
            }
        }
    }

    async fn connect(&self, upstream: &Arc<Upstream>) -> Result<NodeConn, Failed> {
        NodeConn::connect(upstream).await.map_err(|e| {
            upstream.metrics.upstream_errors.inc();
            if upstream.eject() == Transition::Down {
                tracing::warn!(node = %upstream.name, error = %e, "node ejected: connect failed");
            }
            Failed::Connect(format!(
                "cannot connect to {} ({}): {e}",
                upstream.name, upstream.addr
            ))
        })
    }

    /// Writes head and body on `conn`, ends the session's turn once the head
    /// is out, and reads the response head, unless the client leaves first.
    async fn exchange<C: ClientSide>(
        &self,
        conn: &mut NodeConn,
        outgoing: &Outgoing<'_>,
        body: &mut ClientBody<'_, C>,
        turn: &mut Option<Turn>,
    ) -> Result<ResponseHead, Exchanged> {
        let stale = conn.reused && !body.pending;
        let upstream = conn.node.clone();
        if let Err(e) = conn.write(outgoing.head).await {
            return Err(if stale {
                Exchanged::Stale
            } else {
                Exchanged::Failed(self.node_failed(&upstream, &e.into()))
            });
        }
        if let Some(turn) = turn.take() {
            turn.end();
        }
        if body.pending
            && let Err(cut) = self.send_body(conn, body).await
        {
            return match cut {
                BodyCut::Client(answer) => Err(Exchanged::Failed(Failed::Answer(answer))),
                // A node stops reading a body it refuses (too large, unknown
                // session) and says why: pass that on.
                BodyCut::Node(e) => match tokio::time::timeout(
                    NODE_ANSWER_AFTER_CUT,
                    conn.read_head(outgoing.method),
                )
                .await
                {
                    Ok(Ok(head)) => Ok(head),
                    _ => Err(Exchanged::Failed(self.node_failed(&upstream, &e.into()))),
                },
            };
        }
        // A long poll waits here; a client that leaves meanwhile ends it.
        let read = tokio::select! {
            read = conn.read_head(outgoing.method) => read,
            () = body.client.gone() => return Err(Exchanged::Failed(Failed::Gone)),
        };
        match read {
            Ok(head) => Ok(head),
            Err(NodeError::Closed | NodeError::Io(_)) if stale => Err(Exchanged::Stale),
            Err(e) => Err(Exchanged::Failed(self.node_failed(&upstream, &e))),
        }
    }

    async fn send_body<C: ClientSide>(
        &self,
        conn: &mut NodeConn,
        body: &mut ClientBody<'_, C>,
    ) -> Result<(), BodyCut> {
        let mut out = Vec::new();
        while body.pending {
            out.clear();
            if let Err(e) = body.next(&mut out).await {
                return Err(BodyCut::Client(self.body_failed(&e)));
            }
            conn.write(&out).await.map_err(BodyCut::Node)?;
        }
        Ok(())
    }

    /// The client's body failed: over the limit (413), or cut off.
    fn body_failed(&self, e: &BodyError) -> Answer {
        if let BodyError::TooLarge(_) = e {
            self.state.metrics.rejected("body_too_large");
            return too_large(self.max_body);
        }
        answer(
            StatusCode::BAD_REQUEST,
            "body_failed",
            format!("the request body could not be read: {e}"),
            json!({}),
        )
    }

    fn node_failed(&self, upstream: &Upstream, e: &NodeError) -> Failed {
        upstream.metrics.upstream_errors.inc();
        tracing::warn!(node = %upstream.name, error = %e, "node failed the request");
        Failed::Answer(bad_gateway(
            upstream,
            format!("{} failed the request: {e}", upstream.name),
        ))
    }

    /// The node's response, with hop-by-hop headers dropped, the node
    /// named, a handshake's sid route-tagged, and a session's body watched
    /// for a close packet.
    async fn respond(
        &self,
        upstream: &Arc<Upstream>,
        query: &EngineQuery,
        method: &Method,
        conn: NodeConn,
        head: ResponseHead,
    ) -> Reply {
        let pins = &self.state.pins;
        let body = NodeBody::new(conn, &head, self.reuse.clone());
        let ResponseHead {
            status,
            mut headers,
            ..
        } = head;
        rewrite_response(&mut headers, &upstream.name);
        let body = if query.is_polling_handshake(method) && status == StatusCode::OK {
            match self.tag_handshake(upstream, body, &mut headers).await {
                Ok(bytes) => ReplyBody::Full(bytes),
                Err(answer) => return Reply::Answer(answer),
            }
        } else if let Some(sid) = &query.sid {
            if status == StatusCode::BAD_REQUEST {
                // The node does not know the session (any more).
                pins.forget(sid);
            } else {
                pins.touch(sid);
            }
            if *method == Method::GET {
                let observer = CloseObserver {
                    pins: pins.clone(),
                    sid: sid.clone(),
                };
                ReplyBody::Watched(Observed::new(body, observer))
            } else {
                ReplyBody::Node(body)
            }
        } else {
            ReplyBody::Node(body)
        };
        Reply::Node {
            status,
            headers,
            body,
        }
    }

    /// Reads a polling handshake's body whole (it is one small open packet)
    /// and gives the client the route-tagged sid.
    async fn tag_handshake(
        &self,
        upstream: &Arc<Upstream>,
        body: NodeBody,
        headers: &mut HeaderMap,
    ) -> Result<Bytes, Answer> {
        let read = http_body_util::Limited::new(body, MAX_HANDSHAKE_BODY).collect();
        let bytes = match tokio::time::timeout(self.handshake_timeout, read).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                upstream.metrics.upstream_errors.inc();
                return Err(bad_gateway(
                    upstream,
                    format!("{}'s handshake body failed: {e}", upstream.name),
                ));
            }
            Err(_) => {
                upstream.metrics.upstream_errors.inc();
                return Err(bad_gateway(
                    upstream,
                    format!("{} did not finish its handshake body", upstream.name),
                ));
            }
        };
        let keys = &self.state.route_keys;
        let Some(open) = open_packet::rewrite_polling(&bytes, |sid| {
            keys.seal(&upstream.name, upstream.addr.as_str(), sid)
        }) else {
            return Ok(bytes);
        };
        tracing::debug!(sid = %open.client_sid, node = %upstream.name, "session opened");
        self.state
            .pins
            .learn(&open.client_sid, upstream.clone(), open.silence_limit);
        headers.insert(CONTENT_LENGTH, HeaderValue::from(open.bytes.len()));
        Ok(open.bytes.into())
    }
}

/// A node's `101`: the client connection answers it, then hands itself to
/// [`Upgraded::relay`].
pub struct Upgraded {
    state: Arc<State>,
    upstream: Arc<Upstream>,
    query: EngineQuery,
    conn: NodeConn,
    head: ResponseHead,
}

impl Upgraded {
    /// The `101`'s headers for the client: the node's, with the node named.
    /// Upgrade and Connection stay: they are the 101's meaning.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = self.head.headers.clone();
        if let Ok(name) = HeaderValue::from_str(&self.upstream.name) {
            headers.insert(NODE_HEADER, name);
        }
        headers
    }

    /// Relays the two connections until either side closes (or the
    /// shutdown grace ends). `client_early` is what the client sent past
    /// its request head.
    pub async fn relay<S: ClientStream>(self, client: S, client_early: &[u8]) {
        let Upgraded {
            state,
            upstream,
            query,
            conn,
            head,
        } = self;
        // Its header values share the node connection's 8 KiB read buffer:
        // kept, they would hold it for the websocket's whole life.
        drop(head);
        upstream.metrics.websockets.inc();
        // The session's client-visible sid: known now for an upgrade from
        // polling, learned from the first frame for a websocket-only one.
        let sid = Arc::new(std::sync::Mutex::new(query.sid.clone()));
        let tag: Option<relay::TagSid> = match query.sid.as_deref() {
            Some(known) => {
                state.pins.websocket(known, true);
                None
            }
            None if query.engine_io => {
                let (state, upstream, sid) = (state.clone(), upstream.clone(), sid.clone());
                Some(Box::new(move |node_sid: &str| {
                    let client_sid =
                        state
                            .route_keys
                            .seal(&upstream.name, upstream.addr.as_str(), node_sid);
                    state.pins.learn(
                        &client_sid,
                        upstream.clone(),
                        crate::engineio::DEFAULT_SILENCE_LIMIT,
                    );
                    state.pins.websocket(&client_sid, true);
                    *sid.lock().unwrap_or_else(|p| p.into_inner()) = Some(client_sid.clone());
                    client_sid
                }))
            }
            None => {
                upstream.metrics.handshakes.inc();
                None
            }
        };
        let flush = query.sid.as_deref().map(|sid| state.order.relay(sid));
        let (node, early) = conn.into_parts();
        let relayed = relay::run_client(client, client_early, node, early, flush, tag);
        tokio::select! {
            result = relayed => match result {
                Ok((up, down)) => tracing::debug!(node = %upstream.name, up, down, "websocket closed"),
                Err(e) => tracing::debug!(node = %upstream.name, error = %e, "websocket ended"),
            },
            () = state.relays.cancelled() => tracing::debug!(node = %upstream.name, "websocket cut at shutdown"),
        }
        upstream.metrics.websockets.dec();
        let sid = sid.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(sid) = sid {
            // The websocket carried the session; its end is the session's end.
            state.pins.websocket(&sid, false);
            state.pins.forget(&sid);
        }
    }
}

/// Largest handshake body read whole to tag its sid (an open packet is
/// about 120 bytes).
const MAX_HANDSHAKE_BODY: usize = 64 * 1024;

/// A request as it goes to any node: its head (with what was already read
/// of the body).
struct Outgoing<'a> {
    method: &'a Method,
    head: &'a [u8],
}

/// Why a request body stopped on its way to the node.
enum BodyCut {
    /// The client's side failed (over the limit, or cut off): this answer.
    Client(Answer),
    /// The node stopped taking it.
    Node(std::io::Error),
}

/// How long the gateway waits for a node's answer once it stopped taking a
/// request body.
const NODE_ANSWER_AFTER_CUT: Duration = Duration::from_secs(1);

/// An attempt's result before the response head arrived.
enum Exchanged {
    /// The reused connection was closed by the node while idle.
    Stale,
    Failed(Failed),
}

/// A gateway error answer: `{"error": code, "message": …}` plus `extra`.
pub fn answer(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    extra: serde_json::Value,
) -> Answer {
    Answer {
        status,
        body: body::error_json(code, message, extra).to_string(),
    }
}

/// Every candidate refused the connection: no node can take the client now.
fn unreachable(state: &State, errors: &[String]) -> Answer {
    state.metrics.rejected("no_healthy_node");
    answer(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_healthy_node",
        format!("no node accepted the connection: {}", errors.join("; ")),
        json!({}),
    )
}

fn bad_gateway(upstream: &Upstream, message: String) -> Answer {
    answer(
        StatusCode::BAD_GATEWAY,
        "node_failed",
        message,
        json!({ "node": upstream.name }),
    )
}

fn too_large(max: u64) -> Answer {
    answer(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request bodies are limited to {max} bytes"),
        json!({}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_sees_its_own_sid() {
        assert_eq!(
            with_node_sid("/s/?EIO=4&sid=abc.tag&t=1", "abc.tag", "abc").concat(),
            "/s/?EIO=4&sid=abc&t=1"
        );
        assert_eq!(
            with_node_sid("/s/?xsid=q&sid=q", "q", "n").concat(),
            "/s/?xsid=q&sid=n"
        );
        assert_eq!(with_node_sid("/s/?sid=", "q", "n").concat(), "/s/?sid=");
    }
}
