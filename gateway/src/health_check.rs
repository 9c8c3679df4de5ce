//! Active health checks: `GET <health.path>` on every node each `interval`.
//!
//! `fall` failures in a row take a node out of placement, `rise` successes
//! bring it back (passive ejection on connect errors lives in the proxy and
//! feeds the same state). Draining nodes are checked too, so `/nodes` stays
//! truthful while their last sessions finish.

use std::sync::Arc;

use futures_util::future::join_all;
use http::{Request, header};
use http_body_util::BodyExt;
use stickyio_shared::config::gateway::HealthConfig;

use crate::body;
use crate::proxy::upstream_uri;
use crate::state::State;
use crate::upstream::{Transition, Upstream};

/// Runs until the gateway shuts down.
pub async fn run(state: Arc<State>) {
    loop {
        let snapshot = state.snapshot();
        let health = snapshot.config.health.clone();
        let mut targets = snapshot.nodes.clone();
        targets.extend(state.registry.draining());
        let results = join_all(targets.iter().map(|u| check(&state, u, &health))).await;
        for (upstream, ok) in targets.iter().zip(results) {
            match upstream.observe(ok, health.rise, health.fall) {
                Transition::Up => {
                    tracing::info!(node = %upstream.name, "node is up: health checks pass")
                }
                Transition::Down => {
                    tracing::warn!(node = %upstream.name, path = %health.path, "node is down: health checks fail")
                }
                Transition::None => {}
            }
        }
        tokio::select! {
            () = tokio::time::sleep(health.interval.get()) => {}
            () = state.shutdown.cancelled() => return,
        }
    }
}

/// One check: a 2xx within `timeout`.
async fn check(state: &State, upstream: &Upstream, health: &HealthConfig) -> bool {
    let uri = match health.path.parse() {
        Ok(path) => upstream_uri(upstream, &path),
        Err(_) => return false,
    };
    let mut req = Request::new(body::empty());
    *req.uri_mut() = uri;
    req.headers_mut().insert(
        header::USER_AGENT,
        header::HeaderValue::from_static("stickyio-gateway-health"),
    );
    let attempt = async {
        let res = state.client.request(req).await.ok()?;
        let ok = res.status().is_success();
        // Read the (small) body so the pooled connection can be reused.
        res.into_body().collect().await.ok()?;
        Some(ok)
    };
    matches!(
        tokio::time::timeout(health.timeout.get(), attempt).await,
        Ok(Some(true))
    )
}
