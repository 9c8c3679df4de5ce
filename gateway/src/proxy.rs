//! The public listener's request handler: route, forward, stream back.
//!
//! Bodies stream in both directions; nothing is buffered whole. A request
//! without a body that fails to *connect* is retried on the next rendezvous
//! choice (after ejecting the dead node), so a node that just died costs a
//! client nothing; a request that reached a node is never retried.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use serde_json::json;
use stickyio_shared::placement::canonical_ip;

use crate::body::{self, Body};
use crate::client_ip::{client_ip, is_trusted};
use crate::engineio::EngineQuery;
use crate::forwarding::{rewrite_request, rewrite_response};
use crate::limits;
use crate::router::{self, Route};
use crate::sniff::{CloseObserver, HandshakeObserver, Observed};
use crate::state::State;
use crate::upgrade;
use crate::upstream::{Transition, Upstream};

/// One client connection's context.
#[derive(Clone, Copy)]
pub struct Conn {
    pub peer: SocketAddr,
    /// Arrived over TLS: told to the node as `proto=https`.
    pub tls: bool,
}

/// What routing needs to know about a request.
pub struct Routed {
    pub peer_ip: IpAddr,
    pub peer_trusted: bool,
    /// `http` or `https`, as the client reached the gateway.
    pub proto: &'static str,
    pub query: EngineQuery,
    pub route: Route,
}

pub async fn handle(
    state: Arc<State>,
    conn: Conn,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let snapshot = state.snapshot();
    let config = &snapshot.config;
    let peer_ip = canonical_ip(conn.peer.ip());
    let peer_trusted = is_trusted(peer_ip, &config.trusted_proxies);
    let ip = client_ip(peer_ip, req.headers(), &config.trusted_proxies);
    let query = EngineQuery::of(&req);
    let route = router::route(&snapshot, &state.pins, ip, query.sid.as_deref());
    let Some(first) = route.node() else {
        state.metrics.rejected("no_healthy_node");
        return Ok(body::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_node",
            route.reason.to_string(),
            json!({ "client_key": route.key.to_string() }),
        ));
    };
    tracing::trace!(%ip, node = %first.name, reason = %route.reason, uri = %req.uri(), "route");
    let incoming = Routed {
        peer_ip,
        peer_trusted,
        proto: if conn.tls { "https" } else { "http" },
        query,
        route,
    };
    if upgrade::is_upgrade(&req) {
        return Ok(upgrade::handle(state, incoming, req).await);
    }
    let max_body = config.limits.max_body_bytes;
    if limits::declared_too_large(req.headers(), max_body) {
        state.metrics.rejected("body_too_large");
        return Ok(too_large(max_body));
    }
    let idle = config.limits.idle_timeout.get();
    Ok(forward(&state, incoming, req, max_body, idle).await)
}

async fn forward(
    state: &Arc<State>,
    incoming: Routed,
    req: Request<Incoming>,
    max_body: u64,
    idle: std::time::Duration,
) -> Response<Body> {
    let Routed {
        peer_ip,
        peer_trusted,
        proto,
        query,
        route,
    } = incoming;
    let (mut parts, body) = req.into_parts();
    rewrite_request(&mut parts.headers, peer_ip, peer_trusted, proto);
    // Without a body the request can be sent again to the next choice.
    let mut body = (!body.is_end_stream()).then(|| {
        let limited = limits::limited(body, max_body);
        match (&query.sid, parts.method == Method::POST) {
            (Some(sid), true) => {
                let observer = CloseObserver {
                    pins: state.pins.clone(),
                    sid: sid.clone(),
                };
                Observed::new(limited, observer).boxed_unsync()
            }
            _ => limited,
        }
    });
    let pinned = matches!(route.reason, router::Reason::Pinned);
    let mut last_error = String::new();
    for (attempt, upstream) in route.candidates.iter().enumerate() {
        let retryable = body.is_none() && !pinned;
        let mut request = Request::new(body.take().unwrap_or_else(body::empty));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = upstream_uri(upstream, &parts.uri);
        *request.headers_mut() = parts.headers.clone();
        upstream.metrics.requests.inc();
        let sent = tokio::time::timeout(idle, state.client.request(request)).await;
        match sent {
            Ok(Ok(res)) => return respond(state, upstream, &query, &parts.method, res),
            Ok(Err(e)) if e.is_connect() => {
                upstream.metrics.upstream_errors.inc();
                if upstream.eject() == Transition::Down {
                    tracing::warn!(node = %upstream.name, error = %e, "node ejected: connect failed");
                }
                last_error = format!(
                    "cannot connect to {} ({}): {e}",
                    upstream.name, upstream.addr
                );
                if !retryable {
                    // The body went with the attempt: it cannot be sent again.
                    return body::error(
                        StatusCode::BAD_GATEWAY,
                        "node_unreachable",
                        last_error,
                        json!({ "node": upstream.name }),
                    );
                }
                if attempt + 1 < route.candidates.len() {
                    continue;
                }
            }
            Ok(Err(e)) if limits::is_body_too_large(&e) => {
                state.metrics.rejected("body_too_large");
                return too_large(max_body);
            }
            Ok(Err(e)) => {
                upstream.metrics.upstream_errors.inc();
                tracing::warn!(node = %upstream.name, error = %e, "node failed the request");
                return bad_gateway(
                    upstream,
                    format!("{} failed the request: {e}", upstream.name),
                );
            }
            Err(_) => {
                upstream.metrics.upstream_errors.inc();
                return body::error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "node_timeout",
                    format!("{} did not answer within {idle:?}", upstream.name),
                    json!({ "node": upstream.name }),
                );
            }
        }
    }
    unreachable(state, last_error)
}

/// Every candidate refused the connection: no node can take the client now.
pub fn unreachable(state: &State, last_error: String) -> Response<Body> {
    state.metrics.rejected("no_healthy_node");
    body::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_healthy_node",
        format!("no node accepted the connection; last: {last_error}"),
        json!({}),
    )
}

/// The node's response, with hop-by-hop headers dropped, the node named, and
/// its body watched for a handshake or close packet.
fn respond(
    state: &Arc<State>,
    upstream: &Arc<Upstream>,
    query: &EngineQuery,
    method: &Method,
    res: Response<Incoming>,
) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    rewrite_response(&mut parts.headers, &upstream.name);
    let body = if query.is_polling_handshake(method) && parts.status == StatusCode::OK {
        let observer = HandshakeObserver {
            pins: state.pins.clone(),
            upstream: upstream.clone(),
        };
        Observed::new(body, observer)
            .map_err(Into::into)
            .boxed_unsync()
    } else if let Some(sid) = &query.sid {
        if parts.status == StatusCode::BAD_REQUEST {
            // The node does not know the session (any more): stop pinning it.
            state.pins.forget(sid);
        } else {
            state.pins.touch(sid);
        }
        if *method == Method::GET {
            let observer = CloseObserver {
                pins: state.pins.clone(),
                sid: sid.clone(),
            };
            Observed::new(body, observer)
                .map_err(Into::into)
                .boxed_unsync()
        } else {
            body.map_err(Into::into).boxed_unsync()
        }
    } else {
        body.map_err(Into::into).boxed_unsync()
    };
    Response::from_parts(parts, body)
}

/// `http://<node addr><path and query of the request>`.
pub fn upstream_uri(upstream: &Upstream, uri: &Uri) -> Uri {
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    Uri::builder()
        .scheme("http")
        .authority(upstream.authority().clone())
        .path_and_query(path)
        .build()
        .unwrap_or_else(|_| Uri::from_static("/"))
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
