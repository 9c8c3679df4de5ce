//! One log format for every stickyio binary: `tracing` filtered by
//! `RUST_LOG` (default `info`), one line per event on stdout, as text or as
//! JSON (`--log-json`), so gateway and node logs ship through one pipeline.

/// Crates that log whole Socket.IO / websocket packets at debug and trace,
/// among them the `/cluster` connect packet that carries the mesh secret.
/// They are capped at `info` whatever `RUST_LOG` says, so the secret is never
/// logged (SECURITY.md).
const PACKET_LOGGERS: [&str; 6] = [
    "socketioxide",
    "engineioxide",
    "tungstenite",
    "tokio_tungstenite",
    "rust_socketio",
    "rust_engineio",
];

/// Installs the subscriber. Does nothing when one is already installed, as
/// when the launcher runs gateway and nodes in one process.
pub fn init(json: bool) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for target in PACKET_LOGGERS {
        if let Ok(cap) = format!("{target}=info").parse() {
            filter = filter.add_directive(cap);
        }
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
