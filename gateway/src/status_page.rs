//! The operators' status page: one self-contained HTML file
//! (`gateway/static/status.html`), compiled into the binary and served at
//! `/` on the admin listener.
//!
//! The page holds no data, so it is served without the admin token; its
//! script fetches `/status` and `/route`, which need the token, sending it as
//! a bearer header from the tab's sessionStorage. The strict
//! Content-Security-Policy keeps it from loading or posting anything else.

use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use crate::body::{self, Body};

const PAGE: &str = include_str!("../static/status.html");

/// Inline script and style only; fetches to this origin only; never framed.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn page() -> Response<Body> {
    let mut res = Response::new(body::full(PAGE));
    *res.status_mut() = StatusCode::OK;
    let headers = res.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    res
}
