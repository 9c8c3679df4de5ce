//! HTTP/1.1 on the node side of the gateway, as pure functions: the request
//! head the gateway writes, the response head it reads, and the framing of a
//! response body.
//!
//! The gateway writes its own requests to nodes (instead of a pooled client)
//! so it knows the moment a request head has left for the node: that moment
//! releases the next request of the same session ([`crate::ordering`]). The
//! node's request head itself is written by [`crate::forwarding`], straight
//! from the client's; the client side is [`crate::client_wire`].

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// Largest response head a node may send.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers in a node's response head.
const MAX_HEADERS: usize = 100;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("the node's response head is malformed: {0}")]
    Malformed(String),
    #[error("the node's response head exceeds {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("the node sent a malformed chunked body: {0}")]
    Chunked(&'static str),
}

/// How a request body goes to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    /// No body, and no framing header.
    None,
    /// `Content-Length` is among the headers and the bytes go as they are.
    Length,
    /// Each piece becomes a chunk.
    Chunked,
}

/// Makes the bytes of `out` from `start` on one chunk of a chunked body
/// (nothing when there are none).
pub fn frame_chunk(out: &mut Vec<u8>, start: usize) {
    let len = out.len().saturating_sub(start);
    if len == 0 {
        return;
    }
    let line = format!("{len:x}\r\n");
    out.splice(start..start, line.bytes());
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked request body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// HTTP/1.0 style: the body ends when the node closes.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request after this body.
    pub reusable: bool,
}

/// Parses a response head at the start of `buf`. `Ok(None)`: incomplete.
/// On success the head's bytes are removed from `buf`. Interim `1xx`
/// answers other than `101` are skipped.
pub fn parse_response_head(
    buf: &mut BytesMut,
    request_method: &Method,
) -> Result<Option<ResponseHead>, WireError> {
    loop {
        let len = {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::Response::new(&mut slots).parse(buf) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                    return Err(WireError::HeadTooLarge);
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(WireError::Malformed(e.to_string())),
            }
        };
        // The header values are slices of the head's bytes, not copies.
        let bytes = buf.split_to(len).freeze();
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut slots);
        if !matches!(res.parse(&bytes), Ok(httparse::Status::Complete(_))) {
            return Err(WireError::Malformed("unparsable head".into()));
        }
        let code = res.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| WireError::Malformed(format!("status {code}")))?;
        let http10 = res.version == Some(0);
        let mut headers = HeaderMap::with_capacity(res.headers.len());
        for h in res.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| WireError::Malformed(format!("header name {:?}", h.name)))?;
            let value = HeaderValue::from_maybe_shared(bytes.slice_ref(h.value))
                .map_err(|_| WireError::Malformed(format!("value of {name}")))?;
            headers.append(name, value);
        }
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        let framing = framing(status, &headers, request_method)?;
        let close = connection_has(&headers, "close")
            || (http10 && !connection_has(&headers, "keep-alive"));
        let reusable =
            !close && framing != Framing::UntilClose && status != StatusCode::SWITCHING_PROTOCOLS;
        return Ok(Some(ResponseHead {
            status,
            headers,
            framing,
            reusable,
        }));
    }
}

fn framing(status: StatusCode, headers: &HeaderMap, method: &Method) -> Result<Framing, WireError> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    let chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
    if chunked {
        return Ok(Framing::Chunked);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(Framing::UntilClose);
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    match (lengths.next(), lengths.next()) {
        (None, _) => Ok(Framing::UntilClose),
        (Some(one), None) => one
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|n| {
                if n == 0 {
                    Framing::Empty
                } else {
                    Framing::Length(n)
                }
            })
            .ok_or_else(|| WireError::Malformed("content-length is not a number".into())),
        (Some(_), Some(_)) => Err(WireError::Malformed("more than one content-length".into())),
    }
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// This many data bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk, up to the blank line.
    Trailers,
    Done,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Take this many bytes from the front of the buffer as data.
    Data(usize),
    /// More bytes are needed.
    NeedMore,
    /// The body is complete.
    Done,
}

impl Chunked {
    /// Advances over framing in `buf`, stopping at data, at the end of what
    /// `buf` holds, or at the end of the body. Framing bytes are consumed;
    /// data bytes are left for the caller to take (then call
    /// [`Chunked::took`]).
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, WireError> {
        loop {
            match *self {
                Chunked::Done => return Ok(Step::Done),
                Chunked::Data(0) => *self = Chunked::DataEnd,
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    return Ok(Step::Data(n));
                }
                Chunked::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((len, 0))) => {
                        buf.advance(len);
                        *self = Chunked::Trailers;
                    }
                    Ok(httparse::Status::Complete((len, size))) => {
                        buf.advance(len);
                        *self = Chunked::Data(size);
                    }
                    Ok(httparse::Status::Partial) if buf.len() > 1024 => {
                        return Err(WireError::Chunked("chunk-size line too long"));
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::NeedMore),
                    Err(_) => return Err(WireError::Chunked("bad chunk-size line")),
                },
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(WireError::Chunked("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers => {
                    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if buf.len() > MAX_HEAD_BYTES {
                            return Err(WireError::Chunked("trailers too long"));
                        }
                        return Ok(Step::NeedMore);
                    };
                    buf.advance(end + 2);
                    if end == 0 {
                        *self = Chunked::Done;
                    }
                }
            }
        }
    }

    /// `n` data bytes were taken from the buffer.
    pub fn took(&mut self, n: usize) {
        if let Chunked::Data(left) = self {
            *left = left.saturating_sub(n as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, method: Method) -> Result<Option<ResponseHead>, WireError> {
        parse_response_head(&mut BytesMut::from(text), &method)
    }

    #[test]
    fn chunks_are_framed_in_place() {
        let mut out = b"PUT /x HTTP/1.1\r\n\r\n".to_vec();
        let start = out.len();
        out.extend_from_slice(b"hello world, 17b");
        frame_chunk(&mut out, start);
        let start = out.len();
        frame_chunk(&mut out, start);
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "PUT /x HTTP/1.1\r\n\r\n10\r\nhello world, 17b\r\n0\r\n\r\n"
        );
    }

    #[test]
    fn response_heads_tell_their_framing_and_reuse() {
        let head = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (head.status, head.framing, head.reusable),
            (StatusCode::OK, Framing::Length(5), true)
        );
        let head = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        let head = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::HEAD)
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::Empty);
        let head = parse("HTTP/1.0 200 OK\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!((head.framing, head.reusable), (Framing::UntilClose, false));
        let head = parse(
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!((head.framing, head.reusable), (Framing::Empty, false));
        let head = parse(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!((head.status.as_u16(), head.reusable), (101, false));
    }

    #[test]
    fn interim_answers_are_skipped_and_partial_heads_wait() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        );
        let head = parse_response_head(&mut buf, &Method::POST)
            .unwrap()
            .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(&buf[..], b"ok");
        assert!(
            parse("HTTP/1.1 200 OK\r\nContent-Le", Method::GET)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn broken_heads_say_what_is_wrong() {
        assert!(matches!(
            parse("HTTX/1.1 200\r\n\r\n", Method::GET),
            Err(WireError::Malformed(_))
        ));
        assert_eq!(
            parse(
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                Method::GET
            )
            .unwrap_err(),
            WireError::Malformed("more than one content-length".into())
        );
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES + 1));
        assert_eq!(
            parse(&huge, Method::GET).unwrap_err(),
            WireError::HeadTooLarge
        );
    }

    /// Decodes `wire` fed in pieces of `step` bytes.
    fn decode(wire: &[u8], step: usize) -> Result<Vec<u8>, WireError> {
        let mut state = Chunked::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match state.step(&mut buf)? {
                Step::Data(n) => {
                    out.extend_from_slice(&buf.split_to(n));
                    state.took(n);
                }
                Step::Done => return Ok(out),
                Step::NeedMore if fed >= wire.len() => return Err(WireError::Chunked("eof")),
                Step::NeedMore => {
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_cuts() {
        let wire =
            b"5;ext=1\r\nhello\r\n1a\r\n, abcdefghijklmnopqrstuvwx\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            assert_eq!(
                decode(wire, step).unwrap(),
                b"hello, abcdefghijklmnopqrstuvwx",
                "step {step}"
            );
        }
        assert_eq!(decode(b"0\r\n\r\n", 1).unwrap(), b"");
        assert!(matches!(decode(b"zz\r\n", 4), Err(WireError::Chunked(_))));
        assert!(matches!(
            decode(b"1\r\nab\r\n", 8),
            Err(WireError::Chunked(_))
        ));
    }
}
