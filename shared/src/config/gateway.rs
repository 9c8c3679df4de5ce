//! `gateway.toml`: listeners, trusted proxies, health checks and the node list.
