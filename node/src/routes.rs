//! The node's plain HTTP routes on the client port, next to Engine.IO.
//!
//! socketioxide answers everything under `/socket.io/` and passes every other
//! request to [`Routes`]: the demo page `/`, its client script, and a bare
//! `/healthz` that says "ok" and nothing else (the gateway's default health
//! check). Readiness and metrics name peers and counters, so they live on the
//! admin listener (`admin.rs`), never here. All answer from memory, so they
//! are plain functions with no I/O.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::registry::Registry;

use crate::demo;
use crate::readiness::ReadinessChecks;

/// What the routes and the admin listener read, shared with the
/// [`crate::Node`] that registers into it.
pub(crate) struct HttpState {
    pub registry: RwLock<Registry>,
    pub readiness: ReadinessChecks,
    /// The demo page, rendered once with the node's name.
    pub page: Bytes,
}

/// The hyper service behind socketioxide for every non-Engine.IO request.
#[derive(Clone)]
pub(crate) struct Routes(pub Arc<HttpState>);

impl<B> hyper::service::Service<Request<B>> for Routes {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        ready(Ok(self.route(req.method(), req.uri().path())))
    }
}

impl Routes {
    fn route(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let known = matches!(path, "/" | "/healthz") || path == demo::CLIENT_SCRIPT_PATH;
        if !known {
            return text(StatusCode::NOT_FOUND, format!("no route for {path}\n"));
        }
        if method != Method::GET && method != Method::HEAD {
            return method_not_allowed(method, path);
        }
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
            "/" => body(
                StatusCode::OK,
                "text/html; charset=utf-8",
                self.0.page.clone(),
            ),
            _ => {
                let mut response = body(
                    StatusCode::OK,
                    "text/javascript; charset=utf-8",
                    Bytes::from_static(demo::CLIENT_SCRIPT.as_bytes()),
                );
                response.headers_mut().insert(
                    CACHE_CONTROL,
                    http::HeaderValue::from_static("public, max-age=3600"),
                );
                response
            }
        }
    }
}

/// `405` for anything but GET and HEAD: every plain route is read-only.
pub(crate) fn method_not_allowed(method: &Method, path: &str) -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{path} only answers GET and HEAD, not {method}\n"),
    );
    response
        .headers_mut()
        .insert(ALLOW, http::HeaderValue::from_static("GET, HEAD"));
    response
}

pub(crate) fn text(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    body(status, "text/plain; charset=utf-8", Bytes::from(message))
}

pub(crate) fn body(
    status: StatusCode,
    content_type: &'static str,
    bytes: Bytes,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}
