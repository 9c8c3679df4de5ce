//! WebSocket (and any other HTTP/1 `Upgrade`) relaying.
//!
//! The upgrade request goes to the routed node on a connection of its own
//! (a relayed websocket owns its TCP connection, so pooling would gain
//! nothing). On `101 Switching Protocols` both connections are taken over
//! from hyper and bytes are copied both ways until either side closes; any
//! other answer is passed back as a normal response.

use std::sync::Arc;

use http::header::{CONNECTION, HeaderValue, UPGRADE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;

use crate::body::{self, Body, BoxError};
use crate::forwarding::{NODE_HEADER, rewrite_request, rewrite_response};
use crate::proxy::{Routed, bad_gateway, unreachable};
use crate::router::Reason;
use crate::state::{CONNECT_TIMEOUT, State};
use crate::upstream::{Transition, Upstream};

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

pub async fn handle(
    state: Arc<State>,
    routed: Routed,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let Routed {
        peer_ip,
        peer_trusted,
        proto,
        query,
        route,
    } = routed;
    let (mut parts, _) = req.into_parts();
    let protocol = parts.headers.get(UPGRADE).cloned();
    rewrite_request(&mut parts.headers, peer_ip, peer_trusted, proto);
    if let Some(protocol) = protocol {
        parts.headers.insert(UPGRADE, protocol);
    }
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();

    let pinned = route.reason == Reason::Pinned;
    let idle = state.snapshot().config.limits.idle_timeout.get();
    let mut last_error = String::new();
    for upstream in &route.candidates {
        let stream = match connect(upstream).await {
            Ok(stream) => stream,
            Err(why) => {
                last_error = connect_failed(upstream, &why);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut request = Request::new(body::empty());
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = match path.parse() {
            Ok(uri) => uri,
            Err(_) => {
                return body::error(
                    StatusCode::BAD_REQUEST,
                    "bad_uri",
                    "unusable request target",
                    json!({}),
                );
            }
        };
        *request.headers_mut() = parts.headers.clone();
        upstream.metrics.requests.inc();
        let response = match tokio::time::timeout(idle, exchange(stream, request)).await {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => {
                upstream.metrics.upstream_errors.inc();
                return bad_gateway(
                    upstream,
                    format!("{} failed the upgrade: {e}", upstream.name),
                );
            }
            Err(_) => {
                upstream.metrics.upstream_errors.inc();
                return bad_gateway(
                    upstream,
                    format!(
                        "{} did not answer the upgrade within {idle:?}",
                        upstream.name
                    ),
                );
            }
        };
        return relay(
            &state,
            upstream.clone(),
            query.sid.clone(),
            client_upgrade,
            response,
        );
    }
    if pinned {
        // The session lives only there.
        return body::error(
            StatusCode::BAD_GATEWAY,
            "node_unreachable",
            last_error,
            json!({}),
        );
    }
    unreachable(&state, last_error)
}

async fn connect(upstream: &Upstream) -> Result<TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream.addr.as_str())).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".to_owned()),
    }
}

fn connect_failed(upstream: &Upstream, why: &str) -> String {
    upstream.metrics.upstream_errors.inc();
    if upstream.eject() == Transition::Down {
        tracing::warn!(node = %upstream.name, error = why, "node ejected: connect failed");
    }
    format!(
        "cannot connect to {} ({}): {why}",
        upstream.name, upstream.addr
    )
}

/// Sends the upgrade request on its own HTTP/1 connection.
async fn exchange(
    stream: TcpStream,
    request: Request<Body>,
) -> Result<Response<Incoming>, hyper::Error> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection to node ended");
        }
    });
    sender.send_request(request).await
}

/// Passes a non-101 answer back, or takes both connections over and copies
/// bytes between them until either side closes.
fn relay(
    state: &Arc<State>,
    upstream: Arc<Upstream>,
    sid: Option<String>,
    client_upgrade: OnUpgrade,
    mut response: Response<Incoming>,
) -> Response<Body> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = response.into_parts();
        rewrite_response(&mut parts.headers, &upstream.name);
        return Response::from_parts(parts, body.map_err(Into::into).boxed_unsync());
    }
    let node_upgrade = hyper::upgrade::on(&mut response);
    let mut to_client = Response::new(body::empty());
    *to_client.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *to_client.headers_mut() = response.headers().clone();
    if let Ok(name) = HeaderValue::from_str(&upstream.name) {
        // Upgrade and Connection stay: they are the 101's meaning.
        to_client.headers_mut().insert(NODE_HEADER, name);
    }

    upstream.metrics.websockets.inc();
    match &sid {
        Some(sid) => state.pins.websocket(sid, true),
        None => {
            upstream.metrics.handshakes.inc();
        }
    }
    let state = state.clone();
    state.tasks.clone().spawn(async move {
        let copied = async {
            let (client, node) = tokio::try_join!(client_upgrade, node_upgrade)?;
            let (mut client, mut node) = (TokioIo::new(client), TokioIo::new(node));
            let copied = tokio::io::copy_bidirectional(&mut client, &mut node).await?;
            Ok::<_, BoxError>(copied)
        };
        tokio::select! {
            result = copied => match result {
                Ok((up, down)) => tracing::debug!(node = %upstream.name, up, down, "websocket closed"),
                Err(e) => tracing::debug!(node = %upstream.name, error = %e, "websocket ended"),
            },
            () = state.relays.cancelled() => tracing::debug!(node = %upstream.name, "websocket cut at shutdown"),
        }
        upstream.metrics.websockets.dec();
        if let Some(sid) = sid {
            // The websocket carried the session; its end is the session's end.
            state.pins.websocket(&sid, false);
            state.pins.forget(&sid);
        }
    });
    to_client
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
