//! `/readyz`: whether this node should receive traffic, and why not.
//!
//! A node is ready while it is listening and not shutting down. Other parts
//! of the node add their own [`Readiness`] checks (the cluster mesh: linked to
//! every reachable peer) with [`crate::Node::add_readiness`]; the node is ready
//! only when all of them are.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use serde::Serialize;
use serde_json::{Map, Value, json};

/// One readiness condition, asked on every `/readyz` request. Must be quick
/// and must not block: report state kept up to date elsewhere.
pub trait Readiness: Send + Sync + 'static {
    /// Key of this check in the `/readyz` JSON, e.g. `"mesh"`.
    fn name(&self) -> &str;
    fn check(&self) -> Check;
}

/// The outcome of one [`Readiness`] check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub ready: bool,
    /// Anything that explains the state, e.g. which peers are linked.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

/// The node's own condition plus the checks others added.
pub(crate) struct ReadinessChecks {
    node: String,
    serving: AtomicBool,
    checks: RwLock<Vec<Arc<dyn Readiness>>>,
}

impl ReadinessChecks {
    pub(crate) fn new(node: &str) -> ReadinessChecks {
        ReadinessChecks {
            node: node.to_owned(),
            serving: AtomicBool::new(false),
            checks: RwLock::default(),
        }
    }

    pub(crate) fn add(&self, check: Arc<dyn Readiness>) {
        self.checks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(check);
    }

    /// Set when the node starts accepting connections, cleared when it starts
    /// shutting down so load balancers stop sending new clients first.
    pub(crate) fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    /// Whether every check passes, and the JSON body of `/readyz`:
    /// `{"ready":…, "node":…, "checks":{"listening":{"ready":…}, …}}`.
    pub(crate) fn report(&self) -> (bool, Value) {
        let serving = self.serving.load(Ordering::Relaxed);
        let mut ready = serving;
        let mut checks = Map::new();
        let listening = Check {
            ready: serving,
            detail: if serving {
                Value::Null
            } else {
                json!("not accepting connections")
            },
        };
        checks.insert("listening".to_owned(), json!(listening));
        for check in self
            .checks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let outcome = check.check();
            ready &= outcome.ready;
            checks.insert(check.name().to_owned(), json!(outcome));
        }
        (
            ready,
            json!({ "ready": ready, "node": self.node, "checks": checks }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(bool);
    impl Readiness for Fixed {
        fn name(&self) -> &str {
            "mesh"
        }
        fn check(&self) -> Check {
            Check {
                ready: self.0,
                detail: json!({ "linked": 1 }),
            }
        }
    }

    #[test]
    fn ready_only_when_serving_and_every_check_passes() {
        let checks = ReadinessChecks::new("node-a");
        let (ready, body) = checks.report();
        assert!(!ready);
        assert_eq!(
            body["checks"]["listening"]["detail"],
            "not accepting connections"
        );
        checks.set_serving(true);
        assert_eq!(
            checks.report(),
            (
                true,
                json!({"ready": true, "node": "node-a", "checks": {"listening": {"ready": true}}})
            )
        );
        checks.add(Arc::new(Fixed(false)));
        let (ready, body) = checks.report();
        assert!(!ready);
        assert_eq!(
            body["checks"]["mesh"],
            json!({"ready": false, "detail": {"linked": 1}})
        );
    }
}
