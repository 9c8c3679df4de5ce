//! The demo page on `/` and the Socket.IO client script it loads.
//!
//! The page shows which node served it and lets two tabs chat on a topic. It
//! loads the official client from this node (`/socket.io.min.js`, vendored
//! from the npm package `socket.io-client`, the version pinned in
//! `tests/js/package.json`), so it needs no CDN, and uses only relative URLs
//! so it works the same behind the gateway.

/// `node/static/socket.io.min.js`: served at [`CLIENT_SCRIPT_PATH`]; not under
/// `/socket.io/`, which is the Engine.IO endpoint.
pub(crate) const CLIENT_SCRIPT: &str = include_str!("../static/socket.io.min.js");
pub(crate) const CLIENT_SCRIPT_PATH: &str = "/socket.io.min.js";

const PAGE_TEMPLATE: &str = include_str!("../static/demo.html");

/// The demo page for the node named `node`.
pub(crate) fn page(node: &str) -> String {
    PAGE_TEMPLATE.replace("{{NODE}}", &html_escape(node))
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_shows_the_escaped_node_name_and_loads_the_local_client() {
        let html = page("<b>&'\"");
        assert!(html.contains("<strong id=\"node\">&lt;b&gt;&amp;&#39;&quot;</strong>"));
        assert!(!html.contains("{{NODE}}"));
        assert!(html.contains("<script src=\"socket.io.min.js\"></script>"));
    }

    #[test]
    fn vendored_client_is_the_version_the_js_tests_pin() {
        let package: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/js/package.json")).unwrap();
        let version = package["devDependencies"]["socket.io-client"]
            .as_str()
            .unwrap();
        assert!(
            CLIENT_SCRIPT.starts_with(&format!("/*!\n * Socket.IO v{version}\n")),
            "node/static/socket.io.min.js is not socket.io-client {version}"
        );
    }
}
