//! The public listener's request handler: route, take the session's turn,
//! forward, stream back. Plain requests and upgrades take this one path;
//! only the answer differs (a streamed body, or a relayed connection).
//!
//! Bodies stream in both directions; nothing is buffered whole. A request
//! without a body that fails to *connect* is retried on the next rendezvous
//! choice (after ejecting the dead node), so a node that just died costs a
//! client nothing; a request that reached a node is never retried, except
//! on a kept-alive connection the node had closed before the request came.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{
    CONNECTION, CONTENT_LENGTH, EXPECT, HOST, HeaderValue, SEC_WEBSOCKET_EXTENSIONS,
    TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::json;
use stickyio_shared::connection_limit::Counted;
use stickyio_shared::placement::canonical_ip;
use tokio::net::TcpStream;

use crate::body::{self, Body};
use crate::client_ip::{client_ip, is_trusted};
use crate::engineio::EngineQuery;
use crate::forwarding::{NODE_HEADER, rewrite_request, rewrite_response};
use crate::hyper_conn::{DrivenBody, HyperConn, HyperReuse, SendError};
use crate::limits;
use crate::node_conn::{NodeBody, NodeConn, NodeError, Reuse};
use crate::open_packet;
use crate::ordering::Turn;
use crate::relay;
use crate::route_tag::Tagged;
use crate::router::{self, Reason, Route};
use crate::sniff::{CloseObserver, Observed};
use crate::state::State;
use crate::upstream::{Transition, Upstream};
use crate::wire::{self, RequestBody, ResponseHead};

/// One client connection's context.
#[derive(Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    /// Arrived over TLS: told to the node as `proto=https`.
    pub tls: bool,
    /// The connection's idle node connection, for the next upgrade.
    pub reuse: Reuse,
    /// The connection's idle hyper client connection, for the next plain
    /// request (the experiment's path).
    pub hyper: HyperReuse,
}

pub async fn handle(
    state: Arc<State>,
    conn: Conn,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let snapshot = state.snapshot();
    let config = &snapshot.config;
    let peer_ip = canonical_ip(conn.peer.ip());
    let peer_trusted = is_trusted(peer_ip, &config.trusted_proxies);
    let ip = client_ip(peer_ip, req.headers(), &config.trusted_proxies);
    let query = EngineQuery::of(&req);
    let session = match query.sid.as_deref().map(|sid| state.route_keys.open(sid)) {
        None => None,
        Some(Ok(tagged)) => Some(tagged),
        Some(Err(e)) => {
            state.metrics.rejected("invalid_sid");
            tracing::debug!(peer = %conn.peer, error = %e, "request refused: bad sid");
            return Ok(body::error(
                StatusCode::BAD_REQUEST,
                "invalid_sid",
                e.to_string(),
                json!({}),
            ));
        }
    };
    let route = match &session {
        Some(tagged) => router::session(&snapshot, ip, state.session_node(&snapshot, tagged)),
        None => router::route(&snapshot, ip),
    };
    if route.node().is_none() {
        state.metrics.rejected("no_healthy_node");
        return Ok(body::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_node",
            route.reason.to_string(),
            json!({ "client_key": route.key.to_string() }),
        ));
    }
    if let Reason::FailOpen { .. } = route.reason {
        state.metrics.fail_open_requests().inc();
    }
    let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let max_body = config.limits.max_body_bytes;
    if upgrade.is_none() && limits::declared_too_large(req.headers(), max_body) {
        state.metrics.rejected("body_too_large");
        return Ok(too_large(max_body));
    }
    // The session's place in line is taken before anything can await.
    let turn = match &query.sid {
        Some(sid) => Some(state.order.enter(sid).await),
        None => None,
    };
    let exchange = Exchange {
        state: &state,
        reuse: &conn.reuse,
        hyper: &conn.hyper,
        proto: if conn.tls { "https" } else { "http" },
        peer_ip,
        peer_trusted,
        max_body,
        idle: config.limits.idle_timeout.get(),
        handshake: query.engine_io && query.sid.is_none(),
        handshake_timeout: config.limits.handshake_timeout.get(),
    };
    Ok(exchange
        .forward(req, upgrade, &query, session.as_ref(), &route, turn)
        .await)
}

/// `Connection: upgrade` together with an `Upgrade` protocol.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    let connection_upgrade = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && req.headers().contains_key(UPGRADE)
}

struct Exchange<'a> {
    state: &'a Arc<State>,
    reuse: &'a Reuse,
    hyper: &'a HyperReuse,
    proto: &'static str,
    peer_ip: IpAddr,
    peer_trusted: bool,
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
    Answer(Response<Body>),
}

impl Exchange<'_> {
    async fn forward(
        &self,
        req: Request<Incoming>,
        upgrade: Option<OnUpgrade>,
        query: &EngineQuery,
        session: Option<&Tagged>,
        route: &Route<'_>,
        mut turn: Option<Turn>,
    ) -> Response<Body> {
        let pinned = route.reason == Reason::Session;
        let (mut parts, body) = req.into_parts();
        let protocol = parts.headers.get(UPGRADE).cloned();
        let client_chunked = parts.headers.contains_key(TRANSFER_ENCODING);
        rewrite_request(
            &mut parts.headers,
            self.peer_ip,
            self.peer_trusted,
            self.proto,
        );
        // hyper answered any `Expect: 100-continue` itself, and decoded a
        // chunked body: its length is not the one a `Content-Length` beside
        // it claims (request smuggling), so only the chunks go on.
        parts.headers.remove(EXPECT);
        if client_chunked {
            parts.headers.remove(CONTENT_LENGTH);
        }
        // The first frame of a websocket-only session carries the sid the
        // gateway rewrites: it must not be compressed.
        if upgrade.is_some() && query.engine_io && query.sid.is_none() {
            parts.headers.remove(SEC_WEBSOCKET_EXTENSIONS);
        }
        if !parts.headers.contains_key(HOST)
            && let Some(first) = route.node()
            && let Ok(host) = HeaderValue::from_str(first.addr.as_str())
        {
            parts.headers.insert(HOST, host);
        }
        let mut body = match upgrade {
            Some(_) => None,
            None => (!body.is_end_stream()).then(|| self.request_body(body, &parts, query)),
        };
        let framing = match (&body, upgrade.is_some()) {
            (_, true) => {
                if let Some(protocol) = protocol {
                    parts.headers.insert(UPGRADE, protocol);
                }
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                RequestBody::None
            }
            (None, false) => RequestBody::None,
            (Some(_), false) if parts.headers.contains_key(CONTENT_LENGTH) => RequestBody::Length,
            (Some(_), false) => RequestBody::Chunked,
        };
        let mut head = Vec::with_capacity(512);
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        // Nodes see only their own sids.
        let target = match (session, &query.sid) {
            (Some(tagged), Some(sid)) => std::borrow::Cow::Owned(target.replacen(
                &format!("sid={sid}"),
                &format!("sid={}", tagged.node_sid),
                1,
            )),
            _ => std::borrow::Cow::Borrowed(target),
        };
        if upgrade.is_none() {
            // The experiment: plain requests go through hyper's client.
            let uri = http::Uri::try_from(target.as_ref());
            drop(target);
            return match uri {
                Ok(uri) => {
                    parts.uri = uri;
                    self.forward_hyper(parts, body, query, route, pinned, turn)
                        .await
                }
                Err(e) => body::error(
                    StatusCode::BAD_REQUEST,
                    "bad_target",
                    e.to_string(),
                    json!({}),
                ),
            };
        }
        wire::encode_request_head(&mut head, &parts.method, &target, &parts.headers, framing);
        // The head is encoded: let go of hyper's parsed request now. Its
        // header values share hyper's read buffer, and while any of them
        // lives hyper cannot reuse that buffer for the read it keeps open
        // during a long poll: it allocates another (24 KiB per idle polling
        // session, measured with massif).
        let method = parts.method.clone();
        drop(target);
        drop(parts);
        // The body's first frame (a whole polling payload, usually) goes in
        // the head's write: one system call instead of two.
        if let Some(b) = body.as_mut() {
            match b.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        encode_body(&mut head, framing, &data);
                    }
                }
                Some(Err(e)) => return self.body_failed(&*e),
                None => {}
            }
            if b.is_end_stream() {
                if framing == RequestBody::Chunked {
                    head.extend_from_slice(wire::LAST_CHUNK);
                }
                body = None;
            }
        }
        let mut upgrade = upgrade;
        let mut errors = Vec::new();
        let bodyless = body.is_none() && framing == RequestBody::None;
        for upstream in route.candidates() {
            let retryable = bodyless && !pinned;
            let outgoing = Outgoing {
                method: &method,
                head: &head,
                framing,
            };
            match self
                .attempt(upstream, &outgoing, body.take(), &mut turn, retryable)
                .await
            {
                Ok((conn, response)) => {
                    return match upgrade.take() {
                        Some(client) if response.status == StatusCode::SWITCHING_PROTOCOLS => {
                            self.relay(upstream, query, client, conn, response)
                        }
                        _ => {
                            let body = NodeBody::new(conn, &response, self.reuse.clone());
                            self.respond(
                                upstream,
                                query,
                                &method,
                                response.status,
                                response.headers,
                                body,
                            )
                            .await
                        }
                    };
                }
                Err(Failed::Answer(answer)) => return answer,
                Err(Failed::Connect(error)) if retryable => errors.push(error),
                Err(Failed::Connect(error)) => {
                    // The session lives only there, or the body went with the attempt.
                    return body::error(
                        StatusCode::BAD_GATEWAY,
                        "node_unreachable",
                        error,
                        json!({ "node": upstream.name }),
                    );
                }
            }
        }
        unreachable(self.state, &errors)
    }

    /// A plain request through hyper's client on the client connection's
    /// hyper connection to the node.
    async fn forward_hyper(
        &self,
        parts: Parts,
        body: Option<Body>,
        query: &EngineQuery,
        route: &Route<'_>,
        pinned: bool,
        mut turn: Option<Turn>,
    ) -> Response<Body> {
        let method = parts.method.clone();
        let retryable = body.is_none() && !pinned;
        // hyper takes the request: an unanswered handshake is sent again
        // to the next node from a copy of its head.
        let copy = (retryable && self.handshake).then(|| {
            (
                parts.method.clone(),
                parts.uri.clone(),
                parts.version,
                parts.headers.clone(),
            )
        });
        let again = || {
            copy.as_ref().map(|(method, uri, version, headers)| {
                let mut req = Request::new(body::empty());
                *req.method_mut() = method.clone();
                *req.uri_mut() = uri.clone();
                *req.version_mut() = *version;
                *req.headers_mut() = headers.clone();
                req
            })
        };
        let mut req = Some(Request::from_parts(parts, body.unwrap_or_else(body::empty)));
        let mut errors = Vec::new();
        for upstream in route.candidates() {
            let Some(this) = req.take() else { break };
            match self
                .attempt_hyper(upstream, this, &mut turn, retryable)
                .await
            {
                Ok((conn, response)) => {
                    let (head, incoming) = response.into_parts();
                    let body = DrivenBody::new(incoming, conn, self.hyper.clone());
                    return self
                        .respond(upstream, query, &method, head.status, head.headers, body)
                        .await;
                }
                Err((Failed::Answer(answer), _)) => return answer,
                Err((Failed::Connect(error), back)) if retryable => {
                    errors.push(error);
                    req = back.or_else(again);
                    if req.is_none() {
                        break;
                    }
                }
                Err((Failed::Connect(error), _)) => {
                    return body::error(
                        StatusCode::BAD_GATEWAY,
                        "node_unreachable",
                        error,
                        json!({ "node": upstream.name }),
                    );
                }
            }
        }
        unreachable(self.state, &errors)
    }

    /// [`Self::attempt`] over hyper's client. A connection failure before
    /// anything was sent gives the request back.
    #[allow(clippy::type_complexity)]
    async fn attempt_hyper(
        &self,
        upstream: &Arc<Upstream>,
        req: Request<Body>,
        turn: &mut Option<Turn>,
        retryable: bool,
    ) -> Result<(HyperConn, Response<Incoming>), (Failed, Option<Request<Body>>)> {
        upstream.metrics.requests.inc();
        let redispatch = retryable && self.handshake;
        let limit = if redispatch {
            self.handshake_timeout
        } else {
            self.idle
        };
        let mut conn = match self.hyper.take(upstream) {
            Some(conn) => conn,
            None => match self.connect_hyper(upstream).await {
                Ok(conn) => conn,
                Err(failed) => return Err((failed, Some(req))),
            },
        };
        let sent = tokio::time::timeout(limit, async {
            let mut req = req;
            loop {
                let mut end_turn = || {
                    if let Some(turn) = turn.take() {
                        turn.end();
                    }
                };
                match conn.send(req, &mut end_turn).await {
                    Ok(response) => return Ok(response),
                    // A kept-alive connection the node closed while idle:
                    // nothing of this request was taken, so send it afresh.
                    Err(SendError::NotSent(back)) if conn.reused => {
                        req = back;
                        conn = self.connect_hyper(upstream).await?;
                    }
                    Err(SendError::NotSent(_)) => {
                        return Err(self.node_failed(upstream, &NodeError::Closed));
                    }
                    Err(SendError::Failed(e)) => return Err(self.hyper_failed(upstream, &e)),
                }
            }
        })
        .await;
        match sent {
            Ok(Ok(response)) => Ok((conn, response)),
            Ok(Err(failed)) => Err((failed, None)),
            Err(_) if redispatch => {
                upstream.metrics.upstream_errors.inc();
                if upstream.eject() == Transition::Down {
                    tracing::warn!(node = %upstream.name, waited = ?limit, "node ejected: handshake unanswered");
                }
                Err((
                    Failed::Connect(format!(
                        "{} ({}) did not answer the handshake within {limit:?}",
                        upstream.name, upstream.addr
                    )),
                    None,
                ))
            }
            Err(_) => {
                upstream.metrics.upstream_errors.inc();
                Err((
                    Failed::Answer(body::error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "node_timeout",
                        format!("{} did not answer within {limit:?}", upstream.name),
                        json!({ "node": upstream.name }),
                    )),
                    None,
                ))
            }
        }
    }

    async fn connect_hyper(&self, upstream: &Arc<Upstream>) -> Result<HyperConn, Failed> {
        HyperConn::connect(upstream).await.map_err(|e| {
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

    /// hyper's client failed the exchange: the client's body (413, 400), or
    /// the node (502).
    fn hyper_failed(&self, upstream: &Upstream, e: &hyper::Error) -> Failed {
        if e.is_user() || limits::is_body_too_large(e) {
            return Failed::Answer(self.body_failed(e));
        }
        self.node_failed(
            upstream,
            &NodeError::Io(std::io::Error::other(e.to_string())),
        )
    }

    /// The client's body, limited, and watched for a close packet on a
    /// session's `POST`.
    fn request_body(&self, body: Incoming, parts: &Parts, query: &EngineQuery) -> Body {
        let limited = limits::limited(body, self.max_body);
        match (&query.sid, parts.method == Method::POST) {
            (Some(sid), true) => {
                let observer = CloseObserver {
                    pins: self.state.pins.clone(),
                    sid: sid.clone(),
                };
                Observed::new(limited, observer).boxed_unsync()
            }
            _ => limited,
        }
    }

    /// Sends the request to one node and reads its response head.
    async fn attempt(
        &self,
        upstream: &Arc<Upstream>,
        outgoing: &Outgoing<'_>,
        mut body: Option<Body>,
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
                match self.exchange(&mut conn, outgoing, &mut body, turn).await {
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
                Err(Failed::Answer(body::error(
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
    /// is out, and reads the response head.
    async fn exchange(
        &self,
        conn: &mut NodeConn,
        outgoing: &Outgoing<'_>,
        body: &mut Option<Body>,
        turn: &mut Option<Turn>,
    ) -> Result<ResponseHead, Exchanged> {
        let stale = conn.reused && body.is_none();
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
        if let Some(body) = body.take()
            && let Err(cut) = self.send_body(conn, body, outgoing.framing).await
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
        match conn.read_head(outgoing.method).await {
            Ok(head) => Ok(head),
            Err(NodeError::Closed | NodeError::Io(_)) if stale => Err(Exchanged::Stale),
            Err(e) => Err(Exchanged::Failed(self.node_failed(&upstream, &e))),
        }
    }

    async fn send_body(
        &self,
        conn: &mut NodeConn,
        mut body: Body,
        framing: RequestBody,
    ) -> Result<(), BodyCut> {
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
                Err(e) => return Err(BodyCut::Client(self.body_failed(&*e))),
            };
            out.clear();
            encode_body(&mut out, framing, &data);
            conn.write(&out).await.map_err(BodyCut::Node)?;
        }
        if framing == RequestBody::Chunked {
            conn.write(wire::LAST_CHUNK).await.map_err(BodyCut::Node)?;
        }
        Ok(())
    }

    /// The client's body failed: over the limit (413), or cut off.
    fn body_failed(&self, e: &(dyn std::error::Error + 'static)) -> Response<Body> {
        if limits::is_body_too_large(e) {
            self.state.metrics.rejected("body_too_large");
            return too_large(self.max_body);
        }
        body::error(
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
    async fn respond<B>(
        &self,
        upstream: &Arc<Upstream>,
        query: &EngineQuery,
        method: &Method,
        status: StatusCode,
        mut headers: http::HeaderMap,
        body: B,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = bytes::Bytes, Error = body::BoxError> + Send + Unpin + 'static,
    {
        let pins = &self.state.pins;
        rewrite_response(&mut headers, &upstream.name);
        let body = if query.is_polling_handshake(method) && status == StatusCode::OK {
            match self.tag_handshake(upstream, body, &mut headers).await {
                Ok(body) => body,
                Err(answer) => return answer,
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
                Observed::new(body, observer).boxed_unsync()
            } else {
                body.boxed_unsync()
            }
        } else {
            body.boxed_unsync()
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }

    /// Reads a polling handshake's body whole (it is one small open packet)
    /// and gives the client the route-tagged sid.
    async fn tag_handshake<B>(
        &self,
        upstream: &Arc<Upstream>,
        body: B,
        headers: &mut http::HeaderMap,
    ) -> Result<Body, Response<Body>>
    where
        B: hyper::body::Body<Data = bytes::Bytes, Error = body::BoxError> + Send + Unpin + 'static,
    {
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
            return Ok(body::full(bytes));
        };
        tracing::debug!(sid = %open.client_sid, node = %upstream.name, "session opened");
        self.state
            .pins
            .learn(&open.client_sid, upstream.clone(), open.silence_limit);
        headers.insert(CONTENT_LENGTH, HeaderValue::from(open.bytes.len()));
        Ok(body::full(open.bytes))
    }

    /// Answers `101` and relays the two connections until either side closes.
    fn relay(
        &self,
        upstream: &Arc<Upstream>,
        query: &EngineQuery,
        client: OnUpgrade,
        conn: NodeConn,
        head: ResponseHead,
    ) -> Response<Body> {
        let mut to_client = Response::new(body::empty());
        *to_client.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *to_client.headers_mut() = head.headers;
        if let Ok(name) = HeaderValue::from_str(&upstream.name) {
            // Upgrade and Connection stay: they are the 101's meaning.
            to_client.headers_mut().insert(NODE_HEADER, name);
        }
        let state = self.state.clone();
        let upstream = upstream.clone();
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
        state.tasks.clone().spawn(async move {
            let relayed = async {
                let client = client.await?;
                // A plain TCP client gets the readiness-driven relay, which
                // holds no buffer while the websocket is idle.
                let copied = match client.downcast::<TokioIo<Counted<TcpStream>>>() {
                    Ok(parts) => {
                        // What hyper read past the request, copied: its
                        // `Bytes` would keep hyper's whole read buffer alive.
                        let client_early = parts.read_buf.to_vec();
                        drop(parts.read_buf);
                        let socket = parts.io.inner().get_ref();
                        relay::run_sockets(socket, &client_early, node, early, flush, tag).await?
                    }
                    Err(client) => relay::run(TokioIo::new(client), node, early, flush, tag).await?,
                };
                Ok::<_, crate::body::BoxError>(copied)
            };
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
        });
        to_client
    }
}

/// Largest handshake body read whole to tag its sid (an open packet is
/// about 120 bytes).
const MAX_HANDSHAKE_BODY: usize = 64 * 1024;

/// A request as it goes to any node: its head (with what was already read
/// of the body) and how the rest of the body is framed.
struct Outgoing<'a> {
    method: &'a Method,
    head: &'a [u8],
    framing: RequestBody,
}

/// Why a request body stopped on its way to the node.
enum BodyCut {
    /// The client's side failed (over the limit, or cut off): this answer.
    Client(Response<Body>),
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

fn encode_body(out: &mut Vec<u8>, framing: RequestBody, data: &[u8]) {
    match framing {
        RequestBody::Chunked => wire::encode_chunk(out, data),
        _ => out.extend_from_slice(data),
    }
}

/// Every candidate refused the connection: no node can take the client now.
fn unreachable(state: &State, errors: &[String]) -> Response<Body> {
    state.metrics.rejected("no_healthy_node");
    body::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_healthy_node",
        format!("no node accepted the connection: {}", errors.join("; ")),
        json!({}),
    )
}

pub fn bad_gateway(upstream: &Upstream, message: String) -> Response<Body> {
    body::error(
        StatusCode::BAD_GATEWAY,
        "node_failed",
        message,
        json!({ "node": upstream.name }),
    )
}

fn too_large(max: u64) -> Response<Body> {
    body::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request bodies are limited to {max} bytes"),
        json!({}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&'static str, &'static str)]) -> Request<()> {
        let mut r = Request::get("/socket.io/?EIO=4&transport=websocket");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn an_upgrade_needs_both_headers() {
        assert!(is_upgrade(&req(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(is_upgrade(&req(&[
            ("connection", "close"),
            ("connection", "upgrade"),
            ("upgrade", "h2c")
        ])));
        assert!(!is_upgrade(&req(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&req(&[("connection", "upgrade")])));
        assert!(!is_upgrade(&req(&[
            ("connection", "upgraded"),
            ("upgrade", "websocket")
        ])));
    }
}
