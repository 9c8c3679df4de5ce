//! A body wrapper that lets the gateway watch the start of a stream as it
//! passes, without buffering or delaying it.
//!
//! Pinning needs the `sid` of a handshake response *before* the client can
//! send its next request, so the observer sees each chunk before it is handed
//! on. Close packets are judged when the body is finished, from at most
//! [`CAP`] bytes: larger payloads are never close-only, and silence expiry
//! covers the rest.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::engineio::{Sniffed, has_close_packet, sniff_handshake};
use crate::pinning::Pins;
use crate::upstream::Upstream;

/// Most bytes of a body ever kept for inspection.
pub const CAP: usize = 4096;

pub trait Observer: Send + 'static {
    /// The bytes seen so far; `true` when nothing more is needed.
    fn on_data(&mut self, _seen: &[u8]) -> bool {
        false
    }
    /// Once, when the body is dropped; `complete` when all of it was seen.
    fn on_end(&mut self, _seen: &[u8], _complete: bool) {}
}

/// What an observer has seen of one body so far; tells it the end when
/// dropped.
pub struct Watch<O: Observer> {
    seen: Vec<u8>,
    overflow: bool,
    ended: bool,
    satisfied: bool,
    observer: O,
}

impl<O: Observer> Watch<O> {
    pub fn new(observer: O) -> Self {
        Watch {
            seen: Vec::new(),
            overflow: false,
            ended: false,
            satisfied: false,
            observer,
        }
    }

    /// The next bytes of the body went by.
    pub fn see(&mut self, data: &[u8]) {
        let room = CAP - self.seen.len();
        self.overflow |= data.len() > room;
        self.seen.extend_from_slice(&data[..data.len().min(room)]);
        if !self.satisfied {
            self.satisfied = self.observer.on_data(&self.seen);
        }
    }

    /// The whole body went by.
    pub fn ended(&mut self) {
        self.ended = true;
    }
}

impl<O: Observer> Drop for Watch<O> {
    fn drop(&mut self) {
        self.observer
            .on_end(&self.seen, self.ended && !self.overflow);
    }
}

/// A body passed on under a [`Watch`].
pub struct Observed<B, O: Observer> {
    inner: B,
    watch: Watch<O>,
}

impl<B, O: Observer> Observed<B, O> {
    pub fn new(inner: B, observer: O) -> Self {
        Observed {
            inner,
            watch: Watch::new(observer),
        }
    }
}

impl<B, O> HttpBody for Observed<B, O>
where
    B: HttpBody<Data = Bytes> + Unpin,
    O: Observer + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.watch.see(data);
                }
                // A declared length may have arrived whole: no `None` follows.
                if this.inner.is_end_stream() {
                    this.watch.ended();
                }
            }
            Poll::Ready(None) => this.watch.ended(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Learns the `sid` of a polling handshake response.
pub struct HandshakeObserver {
    pub pins: Arc<Pins>,
    pub upstream: Arc<Upstream>,
}

impl Observer for HandshakeObserver {
    fn on_data(&mut self, seen: &[u8]) -> bool {
        match sniff_handshake(seen) {
            Sniffed::Open(open) => {
                tracing::debug!(sid = %open.sid, node = %self.upstream.name, "session pinned");
                self.pins
                    .learn(&open.sid, self.upstream.clone(), open.silence_limit);
                true
            }
            Sniffed::NeedMore => seen.len() >= CAP,
            Sniffed::NotHandshake => true,
        }
    }
}

/// Ends the pin of `sid` when a polling payload carries a close packet.
pub struct CloseObserver {
    pub pins: Arc<Pins>,
    pub sid: String,
}

impl Observer for CloseObserver {
    fn on_end(&mut self, seen: &[u8], complete: bool) {
        if complete && has_close_packet(seen) {
            tracing::debug!(sid = %self.sid, "session closed");
            self.pins.forget(&self.sid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::upstream::Registry;
    use http_body_util::{BodyExt, StreamBody};
    use std::time::Duration;

    fn upstream() -> Arc<Upstream> {
        let config = Arc::new(
            stickyio_shared::config::parse("[[nodes]]\nname = \"a\"\naddr = \"h:1\"\n", "t")
                .unwrap(),
        );
        Registry::default()
            .initial(config, &Metrics::default())
            .nodes
            .remove(0)
    }

    fn chunks(
        parts: &[&'static [u8]],
    ) -> impl HttpBody<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn handshake_is_learned_before_its_last_byte_is_passed_on() {
        let pins = Arc::new(Pins::new());
        let observer = HandshakeObserver {
            pins: pins.clone(),
            upstream: upstream(),
        };
        let mut body = Observed::new(
            chunks(&[
                b"0{\"sid\":\"abc\",\"pingInt",
                b"erval\":1,\"pingTimeout\":2}",
            ]),
            observer,
        );
        body.frame().await.unwrap().unwrap();
        assert!(pins.get("abc").is_none());
        body.frame().await.unwrap().unwrap();
        assert!(
            pins.get("abc").is_some(),
            "pinned as the closing chunk went by"
        );
    }

    #[tokio::test]
    async fn close_packet_ends_the_pin_only_when_the_body_was_seen_whole() {
        let pins = Arc::new(Pins::new());
        pins.learn("s", upstream(), Duration::from_secs(45));
        let body = Observed::new(
            chunks(&[b"1"]),
            CloseObserver {
                pins: pins.clone(),
                sid: "s".into(),
            },
        );
        drop(body);
        assert!(pins.get("s").is_some(), "an unread body proves nothing");
        let body = Observed::new(
            chunks(&[b"42[\"a\"]\x1e", b"1"]),
            CloseObserver {
                pins: pins.clone(),
                sid: "s".into(),
            },
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"42[\"a\"]\x1e1");
        assert!(pins.get("s").is_none());
    }
}
