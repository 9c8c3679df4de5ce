//! The admin listener (loopback by default): the status page `/`, `/healthz`,
//! `/metrics`, `/nodes`, `/status`, `/route?ip=…&sid=…` and `POST /reload`.
//!
//! Kept apart from the public listener so operators' endpoints are never
//! reachable through the client-facing port. With an admin token set, every
//! endpoint but `/healthz` (which tells nothing, and serves liveness probes)
//! and `/` (the page holds no data; it asks for the token and sends it on
//! each fetch) needs `Authorization: Bearer <token>`, compared in constant
//! time.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::body::{self, Body};
use crate::reload::{self, ReloadError};
use crate::router;
use crate::state::State;
use crate::status_page;
use crate::upstream::Upstream;

pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if !matches!(req.uri().path(), "/healthz" | "/")
        && let Some(refusal) = unauthorized(&state, &req)
    {
        return Ok(refusal);
    }
    let res = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => status_page::page(),
        (&Method::GET, "/healthz") => body::json(StatusCode::OK, &json!({ "status": "ok" })),
        (&Method::GET, "/metrics") => metrics(&state),
        (&Method::GET, "/nodes") => body::json(StatusCode::OK, &nodes(&state)),
        (&Method::GET, "/status") => body::json(StatusCode::OK, &status(&state)),
        (&Method::GET, "/route") => route(&state, req.uri().query().unwrap_or("")),
        (&Method::POST, "/reload") => reload(&state).await,
        (_, "/" | "/healthz" | "/metrics" | "/nodes" | "/status" | "/route" | "/reload") => {
            body::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not allowed on {}", req.method(), req.uri().path()),
                json!({}),
            )
        }
        (_, path) => body::error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no admin endpoint {path}; try /, /healthz, /metrics, /nodes, /status, /route?ip=, POST /reload"
            ),
            json!({}),
        ),
    };
    Ok(res)
}

/// A 401 when a token is set and the request does not carry it.
fn unauthorized<B>(state: &State, req: &Request<B>) -> Option<Response<Body>> {
    let token = state.admin_token.as_ref()?;
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if presented.is_some_and(|p| token.matches(p)) {
        return None;
    }
    state.metrics.rejected("admin_unauthorized");
    tracing::warn!(path = %req.uri().path(), "admin request refused: missing or wrong bearer token");
    let mut res = body::error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this admin endpoint needs `Authorization: Bearer <admin token>`",
        json!({}),
    );
    res.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(res)
}

fn metrics(state: &State) -> Response<Body> {
    let mut res = Response::new(body::full(state.metrics.encode()));
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    res
}

fn node_json(node: &Upstream) -> Value {
    json!({
        "name": node.name,
        "addr": node.addr,
        "weight": node.weight(),
        "healthy": node.is_healthy(),
        "draining": node.is_draining(),
        "sessions": node.metrics.sessions.get(),
        "websockets": node.metrics.websockets.get(),
        "ejected": node.is_ejected(),
        "last_check": node.last_check(),
        // Totals: the status page turns them into rates between two polls.
        "requests": node.metrics.requests.get(),
        "upstream_errors": node.metrics.upstream_errors.get(),
    })
}

/// Every node of the config, then the draining ones.
fn nodes(state: &State) -> Value {
    let snapshot = state.snapshot();
    let draining = state.registry.draining();
    Value::Array(
        snapshot
            .nodes
            .iter()
            .chain(draining.iter())
            .map(|n| node_json(n))
            .collect(),
    )
}

/// What the status page polls: the nodes, fail-open, the last reload, the checks.
fn status(state: &State) -> Value {
    let snapshot = state.snapshot();
    let open = router::fail_open(&snapshot);
    json!({
        "nodes": nodes(state),
        "fail_open": {
            "active": open.is_some(),
            "healthy": open.map(|(healthy, _)| healthy),
            "total": open.map(|(_, total)| total),
            "panic_threshold": snapshot.config.health.panic_threshold,
        },
        "last_reload": state.metrics.reloads.get(),
        "health": {
            "path": snapshot.config.health.path,
            "interval_ms": u64::try_from(snapshot.config.health.interval.get().as_millis()).unwrap_or(u64::MAX),
            "rise": snapshot.config.health.rise,
            "fall": snapshot.config.health.fall,
        },
    })
}

/// Which node a client gets and why; with only a `sid`, that session's node.
fn route(state: &State, query: &str) -> Response<Body> {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.replace("%3A", ":").replace("%3a", ":"))
    };
    if let Some(sid) = param("sid") {
        return explain_sid(state, &sid);
    }
    let Some(raw) = param("ip") else {
        return body::error(
            StatusCode::BAD_REQUEST,
            "missing_ip",
            "use /route?ip=<address> or /route?sid=<session id>",
            json!({}),
        );
    };
    let Ok(ip) = raw.parse::<IpAddr>() else {
        return body::error(
            StatusCode::BAD_REQUEST,
            "bad_ip",
            format!("{raw:?} is not an IP address"),
            json!({}),
        );
    };
    let snapshot = state.snapshot();
    let route = router::route(&snapshot, ip);
    let ranking: Vec<String> = router::ranking(&snapshot, &route.key)
        .iter()
        .map(|n| n.name.clone())
        .collect();
    body::json(
        StatusCode::OK,
        &json!({
            "ip": ip.to_string(),
            "key": route.key.to_string(),
            "node": route.node().map(|n| n.name.clone()),
            "reason": route.reason.to_string(),
            "ranking": ranking,
        }),
    )
}

/// Which node a session id's route tag names; a sid the proxy would
/// refuse gets the same 400 and reason.
fn explain_sid(state: &State, sid: &str) -> Response<Body> {
    match state.route_keys.open(sid) {
        Ok(tagged) => {
            let snapshot = state.snapshot();
            let listed = snapshot.nodes.iter().any(|n| n.addr == tagged.addr);
            body::json(
                StatusCode::OK,
                &json!({
                    "sid": sid,
                    "valid": true,
                    "node": tagged.name,
                    "addr": tagged.addr,
                    "node_sid": tagged.node_sid,
                    "listed": listed,
                    "reason": router::Reason::Session.to_string(),
                }),
            )
        }
        Err(e) => body::error(
            StatusCode::BAD_REQUEST,
            "invalid_sid",
            e.to_string(),
            json!({ "sid": sid, "valid": false }),
        ),
    }
}

async fn reload(state: &State) -> Response<Body> {
    match reload::reload(state).await {
        Ok(report) => body::json(
            StatusCode::OK,
            &json!({ "reloaded": true, "changes": report }),
        ),
        Err(e @ ReloadError::NoFile) => body::error(
            StatusCode::CONFLICT,
            "no_config_file",
            e.to_string(),
            json!({}),
        ),
        Err(ReloadError::Invalid(e)) => body::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            e.to_string(),
            json!({ "location": e.location().map(|l| l.to_string()) }),
        ),
    }
}
