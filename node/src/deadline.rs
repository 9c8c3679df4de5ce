//! A deadline on reading a request body, against slow-body clients.
//!
//! hyper times out slow request heads (`header_read_timeout`) but not slow
//! bodies, and a per-frame timeout (tower-http's) is defeated by a client
//! that sends one byte at a time. So the rest of a body must arrive within
//! `body_read_timeout` of the first read that had to wait for it; past that,
//! reading it fails, and Engine.IO answers 400 and ends the session, as for
//! any body it cannot read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the request body did not arrive within {0:?} (body_read_timeout)")]
    TooSlow(Duration),
    #[error(transparent)]
    Read(#[from] hyper::Error),
}

/// A request body that fails once `limit` has passed since it was first
/// found not ready: bodies that arrive with their head (most polling POSTs,
/// every GET) never start a timer.
#[derive(Debug)]
pub(crate) struct DeadlineBody {
    inner: Incoming,
    limit: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    pub(crate) fn new(inner: Incoming, limit: Duration) -> Self {
        DeadlineBody {
            inner,
            limit,
            deadline: None,
        }
    }
}

impl Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::from)));
        }
        let limit = self.limit;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::TooSlow(limit)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
