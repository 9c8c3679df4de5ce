//! The body type of the admin listener's answers, and the JSON of the errors
//! the gateway writes itself (413, 502, 503, 504 on the public listener,
//! admin).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every request and response body, streamed, never buffered whole.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut res = Response::new(full(value.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// A gateway error: `{"error": code, "message": …}` plus extra fields.
pub fn error(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    extra: serde_json::Value,
) -> Response<Body> {
    json(status, &error_json(code, message, extra))
}

/// The JSON of a gateway error, for [`error`] and the public listener.
pub fn error_json(
    code: &str,
    message: impl Into<String>,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut body = serde_json::json!({ "error": code, "message": message.into() });
    if let (Some(obj), serde_json::Value::Object(more)) = (body.as_object_mut(), extra) {
        obj.extend(more);
    }
    body
}
