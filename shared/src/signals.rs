//! The stop signals every stickyio binary obeys: Ctrl-C (SIGINT) and SIGTERM.
//!
//! The handlers are installed when [`stop_signal`] returns, not when its
//! future is first polled, so a binary calls it before it starts listening:
//! a SIGTERM right after the "listening" line then stops it gracefully
//! instead of hitting the default action.

use std::future::Future;

/// Resolves on Ctrl-C (SIGINT) or SIGTERM; the handlers are installed on return.
#[cfg(unix)]
pub fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
