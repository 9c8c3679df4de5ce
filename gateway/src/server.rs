//! Accept loops of the public and admin listeners, and graceful shutdown of
//! their connections. Public connections are served on the
//! [`crate::workers`], admin ones where they are accepted.
//!
//! On shutdown the loops stop accepting and every connection is asked to
//! finish its in-flight request and close (hyper's graceful shutdown).
//! With `[tls]`, a public connection is served once its TLS handshake has
//! finished within the header read timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::limits;
use crate::node_conn::Reuse;
use crate::proxy::{self, Conn};
use crate::state::State;
use stickyio_shared::connection_limit::{ConnectionLimit, Counted, refuse_busy};
use tokio::sync::OwnedSemaphorePermit;

use crate::workers::{Serve, Workers};

/// Pause after a failed accept (e.g. out of file descriptors) so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts until shutdown, handing each connection to `serve`.
async fn accept_loop<F>(state: Arc<State>, listener: TcpListener, mut serve: F)
where
    F: FnMut(TcpStream, SocketAddr) -> BoxFuture<'static, ()>,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = state.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                state.tasks.spawn(serve(stream, peer));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// The client-facing listener: accepts here, serves on the [`Workers`].
pub async fn serve_public(
    state: Arc<State>,
    listener: TcpListener,
    limit: ConnectionLimit,
    tls: Option<TlsAcceptor>,
    workers: Workers,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = state.shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(permit) = limit.try_acquire() else {
            state.metrics.rejected("connection_limit");
            tracing::warn!(%peer, "connection refused: at the connection limit");
            state.tasks.spawn(refuse_busy(stream, "gateway"));
            continue;
        };
        let (state, tls) = (state.clone(), tls.clone());
        let serve: Serve = Box::new(move |stream, peer, permit| {
            serve_client(state, stream, peer, permit, tls).boxed()
        });
        workers.dispatch(stream, peer, permit, serve);
    }
}

/// One client connection, on its worker.
async fn serve_client(
    state: Arc<State>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    tls: Option<TlsAcceptor>,
) {
    let _ = stream.set_nodelay(true);
    let limits = state.snapshot().config.limits.clone();
    let builder = limits::http1_builder(&limits);
    // The permit goes with the socket, so a websocket keeps it after
    // hyper hands the connection over to the relay.
    let stream = Counted::new(stream, permit);
    let conn = Conn {
        peer,
        tls: tls.is_some(),
        reuse: Reuse::default(),
        hyper: crate::hyper_conn::HyperReuse::default(),
    };
    let open = state.metrics.connections().clone();
    open.inc();
    let handler_state = state.clone();
    let service = service_fn(move |req| proxy::handle(handler_state.clone(), conn.clone(), req));
    match tls {
        None => drive(&state, &builder, stream, service, peer).await,
        Some(acceptor) => {
            let handshake = acceptor.accept(stream);
            match tokio::time::timeout(limits.header_read_timeout.get(), handshake).await {
                Ok(Ok(stream)) => drive(&state, &builder, stream, service, peer).await,
                Ok(Err(e)) => {
                    state.metrics.rejected("tls_handshake");
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    state.metrics.rejected("tls_handshake");
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
    open.dec();
}

/// The admin listener.
pub async fn serve_admin(state: Arc<State>, listener: TcpListener) {
    let loop_state = state.clone();
    accept_loop(loop_state, listener, move |stream, peer| {
        let state = state.clone();
        async move {
            let builder = http1::Builder::new();
            let handler_state = state.clone();
            let service = service_fn(move |req| admin::handle(handler_state.clone(), req));
            drive(&state, &builder, stream, service, peer).await;
        }
        .boxed()
    })
    .await;
}

/// Serves one connection until it closes, or gracefully ends it at shutdown.
async fn drive<I, S>(
    state: &State,
    builder: &http1::Builder,
    stream: I,
    service: S,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = state.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
