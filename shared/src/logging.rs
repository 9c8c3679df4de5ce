//! One log format for every stickyio binary: `tracing` filtered by
//! `RUST_LOG` (default `info`), one line per event on stdout, as text or as
//! JSON (`--log-json`), so gateway and node logs ship through one pipeline.

/// Installs the subscriber. Does nothing when one is already installed, as
/// when the launcher runs gateway and nodes in one process.
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
