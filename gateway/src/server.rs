//! Accept loops of the public and admin listeners, and graceful shutdown of
//! their connections. Public connections are served on the
//! [`crate::workers`], admin ones where they are accepted.
//!
//! Public connections are served by the gateway's own HTTP/1 code
//! ([`crate::client_conn`]), admin ones by hyper's server. On shutdown the
//! loops stop accepting and every connection finishes its in-flight request
//! and closes (idle ones at once). With `[tls]`, a public connection is
//! served once its TLS handshake has finished within the header read
//! timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::client_conn;
use crate::node_conn::Reuse;
use crate::proxy::Conn;
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
    // The permit goes with the socket, so a websocket keeps it while relayed.
    let stream = Counted::new(stream, permit);
    let conn = Conn {
        peer,
        tls: tls.is_some(),
        reuse: Reuse::default(),
    };
    let open = state.metrics.connections().clone();
    open.inc();
    match tls {
        None => client_conn::serve(state.clone(), conn, stream).await,
        // Boxed: the TLS stream's state stays out of plain connections' futures.
        Some(acceptor) => Box::pin(serve_tls(state.clone(), conn, stream, acceptor)).await,
    }
    open.dec();
}

/// A TLS client connection: served once its handshake has finished within
/// the header read timeout.
async fn serve_tls(
    state: Arc<State>,
    conn: Conn,
    stream: Counted<TcpStream>,
    acceptor: TlsAcceptor,
) {
    let peer = conn.peer;
    let timeout = state.snapshot().config.limits.header_read_timeout.get();
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => client_conn::serve(state, conn, stream).await,
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

/// The admin listener.
pub async fn serve_admin(state: Arc<State>, listener: TcpListener) {
    let loop_state = state.clone();
    accept_loop(loop_state, listener, move |stream, peer| {
        let state = state.clone();
        async move {
            let handler_state = state.clone();
            let service = service_fn(move |req| admin::handle(handler_state.clone(), req));
            drive(&state, stream, service, peer).await;
        }
        .boxed()
    })
    .await;
}

/// Serves one admin connection until it closes, or gracefully ends it at
/// shutdown.
async fn drive<S>(state: &State, stream: TcpStream, service: S, peer: SocketAddr)
where
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
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
