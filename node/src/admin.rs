//! The node's admin listener (`admin` in `node.toml`, loopback by default):
//! `/healthz`, `/readyz` and `/metrics` for operators and probes.
//!
//! Kept off the client port so nothing a client (or the gateway's public
//! address, which proxies every path) can reach reveals the node's peers,
//! links or counters. With an admin token set, every endpoint but `/healthz`
//! (which tells nothing and serves liveness probes) needs
//! `Authorization: Bearer <token>`, compared in constant time, as on the
//! gateway's admin listener.

use std::convert::Infallible;
use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use stickyio_shared::connection_limit::ConnectionLimit;
use stickyio_shared::secret::Secret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accept;
use crate::metrics;
use crate::routes::{HttpState, body, method_not_allowed, text};

/// Open admin connections at once: probes and a scraper need a handful, and
/// a cap keeps a misbehaving one from taking the node's file descriptors.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// What the admin listener serves from: the node's state and its token.
pub(crate) struct Admin {
    pub http: Arc<HttpState>,
    pub token: Option<Secret>,
}

impl Admin {
    fn handle(
        &self,
        method: &Method,
        path: &str,
        authorization: Option<&str>,
    ) -> Response<Full<Bytes>> {
        if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
            return text(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint {path}; try /healthz, /readyz, /metrics\n"),
            );
        }
        if path != "/healthz"
            && let Some(refusal) = self.unauthorized(path, authorization)
        {
            return refusal;
        }
        if method != Method::GET && method != Method::HEAD {
            return method_not_allowed(method, path);
        }
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
            "/readyz" => self.readyz(),
            _ => self.metrics(),
        }
    }

    /// A 401 when a token is set and the request does not carry it.
    fn unauthorized(
        &self,
        path: &str,
        authorization: Option<&str>,
    ) -> Option<Response<Full<Bytes>>> {
        let token = self.token.as_ref()?;
        let presented = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if presented.is_some_and(|p| token.matches(p)) {
            return None;
        }
        tracing::warn!(path, "admin request refused: missing or wrong bearer token");
        let mut response = text(
            StatusCode::UNAUTHORIZED,
            "this admin endpoint needs `Authorization: Bearer <admin token>`\n".to_owned(),
        );
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(response)
    }

    fn readyz(&self) -> Response<Full<Bytes>> {
        let (ready, report) = self.http.readiness.report();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        body(
            status,
            "application/json",
            Bytes::from(format!("{report}\n")),
        )
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let registry = self
            .http
            .registry
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match metrics::render(&registry) {
            Ok(text) => body(StatusCode::OK, metrics::CONTENT_TYPE, Bytes::from(text)),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode metrics");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot encode metrics\n".to_owned(),
                )
            }
        }
    }
}

/// Serves the admin listener until `shutdown`, then lets in-flight requests
/// finish (bounded by [`crate::server::DRAIN_TIMEOUT`]).
pub(crate) async fn serve(
    admin: Arc<Admin>,
    listener: TcpListener,
    header_read_timeout: std::time::Duration,
    shutdown: CancellationToken,
) {
    let builder = accept::builder(header_read_timeout);
    let limit = ConnectionLimit::new(MAX_ADMIN_CONNECTIONS);
    let graceful = GracefulShutdown::new();
    while let Some((stream, peer)) = accept::next(&listener, &limit, "node admin", &shutdown).await
    {
        let admin = admin.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let authorization = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let response = admin.handle(req.method(), req.uri().path(), authorization);
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let connection = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
    drop(listener);
    accept::drain(graceful, "node admin").await;
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::readiness::ReadinessChecks;

    fn admin(token: Option<&str>) -> Admin {
        Admin {
            http: Arc::new(HttpState {
                registry: RwLock::new(Registry::default()),
                readiness: ReadinessChecks::new("node-a"),
                page: Bytes::new(),
            }),
            token: token.map(Secret::new),
        }
    }

    #[test]
    fn with_a_token_all_but_healthz_need_it() {
        let admin = admin(Some("t0ken"));
        assert_eq!(admin.handle(&Method::GET, "/healthz", None).status(), 200);
        for path in ["/readyz", "/metrics"] {
            for wrong in [
                None,
                Some("Bearer nope"),
                Some("t0ken"),
                Some("Basic t0ken"),
            ] {
                let response = admin.handle(&Method::GET, path, wrong);
                assert_eq!(response.status(), 401, "{path} {wrong:?}");
                assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
            }
        }
        assert_eq!(
            admin
                .handle(&Method::GET, "/metrics", Some("Bearer t0ken"))
                .status(),
            200
        );
        assert_eq!(
            admin
                .handle(&Method::GET, "/readyz", Some("Bearer t0ken"))
                .status(),
            503,
            "not serving yet, but answered"
        );
    }

    #[test]
    fn without_a_token_everything_is_open_and_unknown_paths_are_404() {
        let admin = admin(None);
        assert_eq!(admin.handle(&Method::GET, "/metrics", None).status(), 200);
        assert_eq!(admin.handle(&Method::GET, "/", None).status(), 404);
        assert_eq!(admin.handle(&Method::POST, "/readyz", None).status(), 405);
    }
}
