//! What the node's two listeners (clients, admin) share: the HTTP builder,
//! an accept loop that holds a connection limit and survives failed
//! accepts, and the bounded drain at shutdown. One copy, so both listeners
//! keep the same protections.

use std::net::SocketAddr;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use stickyio_shared::connection_limit::{ConnectionLimit, Counted, refuse_busy};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::server::DRAIN_TIMEOUT;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// An HTTP/1 and HTTP/2 builder whose connections must send a request head
/// within `header_read_timeout` (slowloris).
pub(crate) fn builder(header_read_timeout: std::time::Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder
}

/// The next connection within `limit`, or `None` once `shutdown` is
/// cancelled. Connections over the limit get a 503 (`who` names the
/// listener in it) and are closed.
pub(crate) async fn next(
    listener: &TcpListener,
    limit: &ConnectionLimit,
    who: &'static str,
    shutdown: &CancellationToken,
) -> Option<(Counted<TcpStream>, SocketAddr)> {
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(listener = who, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        match limit.try_acquire() {
            Some(permit) => return Some((Counted::new(stream, permit), peer)),
            None => {
                tracing::warn!(listener = who, %peer, "connection refused: at the connection limit");
                tokio::spawn(refuse_busy(stream, who));
            }
        }
    }
}

/// Lets in-flight requests finish, for at most [`DRAIN_TIMEOUT`].
pub(crate) async fn drain(graceful: GracefulShutdown, who: &'static str) {
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = who, timeout = ?DRAIN_TIMEOUT, "HTTP requests still running at shutdown; closing anyway");
    }
}
