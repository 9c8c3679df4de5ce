//! Active health checks of every node each `health.interval`: an HTTP
//! `GET health.path` that passes on a status in `health.expect_status` (by
//! default anything below 500, so any server that is up passes, stock
//! Socket.IO apps with no `/healthz` included), or a plain TCP connect.
//!
//! `fall` failures in a row take a node out of placement, `rise` successes
//! bring it back (passive ejection on connect errors lives in the proxy and
//! feeds the same state). Draining nodes are checked too, so `/nodes` stays
//! truthful while their last sessions finish. After each round the gateway
//! says whether it fails open ([`crate::router::fail_open`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use http::Method;
use stickyio_shared::config::gateway::{CheckKind, HealthConfig};

use crate::node_conn::NodeConn;
use crate::router;
use crate::state::State;
use crate::upstream::{CheckResult, Transition, Upstream};

/// Runs until the gateway shuts down.
pub async fn run(state: Arc<State>) {
    let mut failing_open = false;
    loop {
        let snapshot = state.snapshot();
        let health = snapshot.config.health.clone();
        let mut targets = snapshot.nodes.clone();
        targets.extend(state.registry.draining());
        let results = join_all(targets.iter().map(|u| check(u, &health))).await;
        let now = std::time::Instant::now();
        for (upstream, result) in targets.iter().zip(results) {
            if upstream.end_ejection(now, health.ejection_time.get()) == Transition::Up {
                log_transition(upstream, true, None);
            }
            let error = result.error.clone();
            match upstream.checked(result, health.rise, health.fall) {
                Transition::Up => log_transition(upstream, true, error.as_deref()),
                Transition::Down => log_transition(upstream, false, error.as_deref()),
                Transition::None => {}
            }
        }
        let open = router::fail_open(&snapshot);
        state.metrics.fail_open().set(i64::from(open.is_some()));
        match (open, failing_open) {
            (Some((healthy, total)), false) => tracing::warn!(
                healthy,
                total,
                panic_threshold = health.panic_threshold,
                "gateway fails open: too few nodes pass health checks, placing clients on all of them"
            ),
            (None, true) => {
                tracing::info!("gateway stops failing open: enough nodes pass health checks")
            }
            _ => {}
        }
        failing_open = open.is_some();
        tokio::select! {
            () = tokio::time::sleep(health.interval.get()) => {}
            () = state.shutdown.cancelled() => return,
        }
    }
}

/// One line per node going down or up, with what the status page shows.
fn log_transition(node: &Upstream, up: bool, error: Option<&str>) {
    let (weight, draining) = (node.weight(), node.is_draining());
    let (sessions, websockets) = (node.metrics.sessions.get(), node.metrics.websockets.get());
    if up {
        tracing::info!(node = %node.name, addr = %node.addr, weight, draining, sessions, websockets, "node is up: health checks pass");
    } else {
        tracing::warn!(node = %node.name, addr = %node.addr, weight, draining, sessions, websockets, error, "node is down: health checks fail");
    }
}

/// One check, bounded by `health.timeout`.
async fn check(upstream: &Arc<Upstream>, health: &HealthConfig) -> CheckResult {
    let error = match tokio::time::timeout(health.timeout.get(), probe(upstream, health)).await {
        Ok(Ok(())) => None,
        Ok(Err(why)) => Some(why),
        Err(_) => Some(format!("no answer within {:?}", health.timeout.get())),
    };
    CheckResult {
        ok: error.is_none(),
        error,
        at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX),
    }
}

async fn probe(upstream: &Arc<Upstream>, health: &HealthConfig) -> Result<(), String> {
    if health.check == CheckKind::Tcp {
        return upstream
            .dial_check()
            .await
            .map(drop)
            .map_err(|e| format!("connect: {e}"));
    }
    let mut conn = NodeConn::connect_check(upstream)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {} HTTP/1.1\r\nhost: {}\r\nuser-agent: stickyio-gateway-health\r\nconnection: close\r\n\r\n",
        health.path, upstream.addr
    );
    conn.write(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let head = conn
        .read_head(&Method::GET)
        .await
        .map_err(|e| e.to_string())?;
    let status = head.status.as_u16();
    if health.expect_status.contains(status) {
        Ok(())
    } else {
        Err(format!(
            "{} answered {status}, not in expect_status {}",
            health.path,
            String::from(health.expect_status.clone())
        ))
    }
}
