//! HTTP/1 on the client side of the gateway, as pure functions: the request
//! head a client sends (parsed into borrowed header slices, no `HeaderMap`)
//! and the response head the gateway writes back.
//!
//! The gateway serves its public listener itself (see
//! [`crate::client_conn`]) so a request costs one head parse and one
//! forward. The rules a general server would apply and a proxy must keep
//! live here: limits on the head (431), one unambiguous body length (a
//! `Content-Length` next to `Transfer-Encoding`, or two different lengths,
//! are refused as request smuggling), keep-alive by version and
//! `Connection`.

use http::{HeaderMap, Method, StatusCode};

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head, borrowing the connection's read buffer.
#[derive(Debug)]
pub struct RequestHead<'h, 'b> {
    pub method: Method,
    /// The request target as sent (origin form: path and query).
    pub target: &'b str,
    pub http10: bool,
    pub headers: &'h [httparse::Header<'b>],
    pub body: BodyLength,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for `100 Continue`.
    pub expect_continue: bool,
    /// `Connection: upgrade` together with an `Upgrade` protocol.
    pub upgrade: bool,
    /// Bytes of the head in the buffer.
    pub len: usize,
}

/// Why a request head is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("the request head exceeds {0} bytes")]
    TooLarge(usize),
    #[error("the request has more than {0} headers")]
    TooManyHeaders(usize),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("ambiguous request body length: {0}")]
    Smuggling(&'static str),
}

impl HeadError {
    /// The status the client is told.
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge(_) | HeadError::TooManyHeaders(_) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HeadError::Malformed(_) | HeadError::Smuggling(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The reason counted in the `rejected` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            HeadError::TooLarge(_) | HeadError::TooManyHeaders(_) => "header_too_large",
            HeadError::Malformed(_) => "malformed_request",
            HeadError::Smuggling(_) => "ambiguous_body_length",
        }
    }
}

/// Parses a request head at the start of `buf` into `slots` (as many as
/// headers are allowed). `Ok(None)`: incomplete, and still within
/// `max_bytes`.
pub fn parse_request_head<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut [httparse::Header<'b>],
    max_bytes: usize,
) -> Result<Option<RequestHead<'h, 'b>>, HeadError> {
    let max_headers = slots.len();
    let mut req = httparse::Request::new(slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > max_bytes => {
            return Err(HeadError::TooLarge(max_bytes));
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_bytes => {
            return Err(HeadError::TooLarge(max_bytes));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::TooManyHeaders(max_headers));
        }
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line".into()));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| HeadError::Malformed(format!("method {method:?}")))?;
    let Some(target) = origin_form(target, &method) else {
        return Err(HeadError::Malformed(format!("request target {target:?}")));
    };
    let headers: &'h [httparse::Header<'b>] = req.headers;
    let http10 = version == 0;
    let body = body_length(headers)?;
    let close = has_token(headers, "connection", "close");
    let keep_alive = !close && (!http10 || has_token(headers, "connection", "keep-alive"));
    let expect_continue =
        values(headers, "expect").any(|v| v.eq_ignore_ascii_case(b"100-continue"));
    let upgrade =
        has_token(headers, "connection", "upgrade") && values(headers, "upgrade").next().is_some();
    Ok(Some(RequestHead {
        method,
        target,
        http10,
        headers,
        body,
        keep_alive,
        expect_continue,
        upgrade,
        len,
    }))
}

/// The target in origin form (path and query). An absolute-form target
/// (`http://host/path`), which RFC 9112 §3.2.2 says a server must accept,
/// is reduced to its path and query: nodes are origin servers and get the
/// origin form. The authority-form of `CONNECT` is refused.
fn origin_form<'b>(target: &'b str, method: &Method) -> Option<&'b str> {
    if target.starts_with('/') || (*method == Method::OPTIONS && target == "*") {
        return Some(target);
    }
    let scheme_len = ["http://", "https://"]
        .iter()
        .find(|scheme| {
            target
                .get(..scheme.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(scheme))
        })?
        .len();
    let rest = &target[scheme_len..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    if authority_end == 0 {
        return None;
    }
    match &rest[authority_end..] {
        "" => Some("/"),
        path if path.starts_with('/') => Some(path),
        // `http://host?q`: the path is empty, so it is `/` with that query.
        _ => None,
    }
}

fn body_length(headers: &[httparse::Header<'_>]) -> Result<BodyLength, HeadError> {
    let mut length = None;
    for value in values(headers, "content-length") {
        let n = std::str::from_utf8(value)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| HeadError::Malformed("content-length is not a number".into()))?;
        match length {
            Some(seen) if seen != n => {
                return Err(HeadError::Smuggling("differing content-lengths"));
            }
            _ => length = Some(n),
        }
    }
    let mut codings = values(headers, "transfer-encoding")
        .flat_map(|v| v.split(|b| *b == b','))
        .map(trim)
        .filter(|c| !c.is_empty())
        .peekable();
    if codings.peek().is_none() {
        return Ok(match length {
            None | Some(0) => BodyLength::None,
            Some(n) => BodyLength::Length(n),
        });
    }
    if length.is_some() {
        return Err(HeadError::Smuggling(
            "both content-length and transfer-encoding",
        ));
    }
    // Only `chunked`, once, is understood: anything else could end the body
    // somewhere the node would not.
    let all: Vec<&[u8]> = codings.collect();
    match all.as_slice() {
        [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(BodyLength::Chunked),
        _ => Err(HeadError::Smuggling(
            "a transfer-encoding other than chunked",
        )),
    }
}

/// The values of every header called `name`, trimmed.
pub fn values<'a, 'b: 'a>(
    headers: &'a [httparse::Header<'b>],
    name: &'a str,
) -> impl Iterator<Item = &'b [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| trim(h.value))
}

/// Whether a comma-separated header lists `token`.
pub fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    values(headers, name)
        .flat_map(|v| v.split(|b| *b == b','))
        .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How a response body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// No body (or `Content-Length` among the headers and the bytes as
    /// they are).
    AsIs,
    /// Each piece becomes a chunk; `Transfer-Encoding: chunked` is added.
    Chunked,
    /// The body ends when the gateway closes (an HTTP/1.0 client).
    UntilClose,
}

/// Appends a response head: status line, `headers` (already rewritten for
/// the client), framing and `Connection` headers, blank line.
pub fn encode_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    body: ResponseBody,
    connection: Option<&'static str>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if body == ResponseBody::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if let Some(connection) = connection {
        out.extend_from_slice(b"connection: ");
        out.extend_from_slice(connection.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether a response to `method` with `status` carries no body.
pub fn bodyless(method: &Method, status: StatusCode) -> bool {
    *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Method, body, keep-alive, expect-continue, upgrade.
    type Seen = (Method, BodyLength, bool, bool, bool);

    fn parse(text: &str) -> Result<Option<Seen>, HeadError> {
        let mut slots = [httparse::EMPTY_HEADER; 8];
        parse_request_head(text.as_bytes(), &mut slots, 1024)
            .map(|h| h.map(|h| (h.method, h.body, h.keep_alive, h.expect_continue, h.upgrade)))
    }

    #[test]
    fn request_heads_tell_body_keep_alive_and_upgrade() {
        assert_eq!(
            parse("GET /a?b HTTP/1.1\r\nhost: x\r\n\r\n").unwrap(),
            Some((Method::GET, BodyLength::None, true, false, false))
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc").unwrap(),
            Some((Method::POST, BodyLength::Length(3), false, false, false))
        );
        assert_eq!(
            parse("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nExpect: 100-Continue\r\n\r\n")
                .unwrap(),
            Some((Method::POST, BodyLength::Chunked, false, true, false))
        );
        assert_eq!(
            parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap(),
            Some((Method::GET, BodyLength::None, true, false, false))
        );
        assert_eq!(
            parse(
                "GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            .unwrap(),
            Some((Method::GET, BodyLength::None, true, false, true))
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n").unwrap(),
            Some((Method::GET, BodyLength::None, true, false, false))
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n").unwrap(),
            Some((Method::POST, BodyLength::Length(2), true, false, false))
        );
        assert_eq!(parse("GET / HTTP/1.1\r\nhost: x\r\n").unwrap(), None);
    }

    #[test]
    fn absolute_form_targets_reach_the_node_in_origin_form() {
        let target = |text: &str| {
            let mut slots = [httparse::EMPTY_HEADER; 8];
            parse_request_head(text.as_bytes(), &mut slots, 1024)
                .map(|h| h.map(|h| h.target.to_owned()))
        };
        for (sent, seen) in [
            ("http://gw.example/socket.io/?EIO=4", "/socket.io/?EIO=4"),
            ("HTTPS://gw.example:8443/a", "/a"),
            ("http://gw.example", "/"),
            ("/plain?x", "/plain?x"),
        ] {
            let head = format!("GET {sent} HTTP/1.1\r\nhost: gw.example\r\n\r\n");
            assert_eq!(target(&head).unwrap().as_deref(), Some(seen), "{sent}");
        }
        for refused in [
            "gw.example:443",
            "ftp://gw.example/a",
            "http:///a",
            "http://gw.example?q",
        ] {
            let head = format!("GET {refused} HTTP/1.1\r\nhost: gw.example\r\n\r\n");
            assert!(
                matches!(target(&head), Err(HeadError::Malformed(m)) if m.contains("request target")),
                "{refused}"
            );
        }
    }

    #[test]
    fn ambiguous_lengths_are_smuggling() {
        for text in [
            "POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: identity\r\n\r\n",
        ] {
            assert!(
                matches!(parse(text), Err(HeadError::Smuggling(_))),
                "{text:?}"
            );
            assert_eq!(parse(text).unwrap_err().status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn bad_heads_say_why() {
        assert!(matches!(
            parse("THIS IS NOT HTTP\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\ncontent-length: nope\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\ncontent-length: +3\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse("CONNECT x:443 HTTP/1.1\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        let many: String = (0..9).map(|i| format!("x-{i}: v\r\n")).collect();
        let err = parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err();
        assert_eq!(err, HeadError::TooManyHeaders(8));
        assert_eq!(err.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let big = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(1100));
        assert_eq!(parse(&big).unwrap_err(), HeadError::TooLarge(1024));
        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(1100));
        assert_eq!(parse(&big).unwrap_err(), HeadError::TooLarge(1024));
    }

    #[test]
    fn response_heads_carry_framing_and_connection() {
        let mut headers = HeaderMap::new();
        headers.insert("x-stickyio-node", "a".parse().unwrap());
        let mut out = Vec::new();
        encode_response_head(
            &mut out,
            StatusCode::OK,
            &headers,
            ResponseBody::Chunked,
            Some("close"),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nx-stickyio-node: a\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        assert!(bodyless(&Method::HEAD, StatusCode::OK));
        assert!(bodyless(&Method::GET, StatusCode::NOT_MODIFIED));
        assert!(!bodyless(&Method::GET, StatusCode::OK));
    }
}
