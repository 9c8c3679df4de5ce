//! Protection of the public listener: header read timeout, header size and
//! count and body size (the number of open connections is capped by
//! [`stickyio_shared::connection_limit`]).
//!
//! Header limits are enforced by hyper's parser (431 for too large or too
//! many headers, 400 for a malformed request, connection closed on a slow
//! header sender); the body limit is checked up front from `Content-Length`
//! and enforced while streaming for chunked bodies (413).

use http::HeaderMap;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use std::error::Error as StdError;
use stickyio_shared::config::gateway::LimitsConfig;

use crate::body::Body;

/// The HTTP/1 server settings of a client connection.
pub fn http1_builder(limits: &LimitsConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.get())
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
}

/// `Content-Length` above `max`.
pub fn declared_too_large(headers: &HeaderMap, max: u64) -> bool {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > max)
}

/// The request body, failing once it exceeds `max` bytes.
pub fn limited(body: Incoming, max: u64) -> Body {
    Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)).boxed_unsync()
}

/// Whether an error (or one of its causes) is the body limit.
pub fn is_body_too_large(err: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_length_is_checked() {
        let mut h = HeaderMap::new();
        assert!(!declared_too_large(&h, 10));
        h.insert("content-length", "11".parse().unwrap());
        assert!(declared_too_large(&h, 10));
        h.insert("content-length", "10".parse().unwrap());
        assert!(!declared_too_large(&h, 10));
        h.insert("content-length", "garbage".parse().unwrap());
        assert!(
            !declared_too_large(&h, 10),
            "hyper itself refuses a bad length"
        );
    }

    #[tokio::test]
    async fn body_limit_is_recognised_through_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("upstream body failed")]
        struct Wrapper(#[source] Box<dyn StdError + Send + Sync>);
        let body = Limited::new(
            http_body_util::Full::new(bytes::Bytes::from_static(b"12345")),
            4,
        );
        let limit = body.collect().await.err().unwrap();
        assert!(is_body_too_large(&Wrapper(limit)));
        assert!(!is_body_too_large(&Wrapper("other".into())));
    }
}
