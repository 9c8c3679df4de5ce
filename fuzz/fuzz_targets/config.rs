//! `gateway.toml` and `node.toml` are parsed on start, on `check` and on
//! every reload of a file anyone with write access may have mangled. Parsing
//! must not panic, every error must carry a `line:column` inside the text,
//! and an accepted gateway config must survive its `check` rendering (but
//! for the admin token, which is rendered redacted).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stickyio_shared::config::gateway::GatewayConfig;
use stickyio_shared::config::node::NodeConfig;
use stickyio_shared::config::{ConfigError, parse};

fn located(err: &ConfigError, text: &str) {
    let loc = err.location().expect("parse errors are located");
    assert!(
        loc.line >= 1 && loc.line <= text.lines().count().max(1) + 1,
        "{err}"
    );
    assert!(loc.column >= 1, "{err}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse::<GatewayConfig>(text, "gateway.toml") {
        Ok(mut config) => {
            let rendered = config.to_toml();
            let mut again = parse::<GatewayConfig>(&rendered, "rendered")
                .unwrap_or_else(|e| panic!("rendered config refused: {e}\n{rendered}"));
            if config.admin_token.is_some() {
                assert!(
                    rendered.contains("admin_token = \"<redacted>\""),
                    "{rendered}"
                );
                config.admin_token = None;
                again.admin_token = None;
            }
            assert_eq!(again, config);
        }
        Err(e) => located(&e, text),
    }
    if let Err(e) = parse::<NodeConfig>(text, "node.toml") {
        located(&e, text);
    }
});
