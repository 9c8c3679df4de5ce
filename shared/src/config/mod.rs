//! Loading TOML config files with errors that point at `file:line:column`.
//!
//! Both binaries share one loader so every config mistake, whether a TOML
//! syntax error, an unknown key, a bad value or a cross-field rule, is
//! reported the same way and can be fixed without guessing.

mod duration;
pub mod gateway;
pub mod node;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use duration::Duration;

/// Where a config problem is: a file (or other origin) and a 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub origin: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.origin, self.line, self.column)
    }
}

/// A config that could not be used. `Display` starts with `file:line:column`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{location}: {message}")]
    Invalid { location: Location, message: String },
}

impl ConfigError {
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { location, .. } => Some(location),
        }
    }
}

/// A rule that spans several keys, checked after deserialisation.
/// `key` is a dotted path such as `nodes[2].name` or `cluster.secret`; the
/// loader turns it into a line and column in the source text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    pub message: String,
}

impl Violation {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A config type: deserialisable, then checked as a whole.
pub trait Validate {
    fn validate(&self) -> Result<(), Violation>;
}

/// The rules every admin listener's token keys follow (`admin_token`,
/// `admin_token_file`): one or the other, and not blank.
pub(crate) fn check_admin_token(
    token: Option<&crate::secret::Secret>,
    file: Option<&Path>,
) -> Result<(), Violation> {
    if token.is_some() && file.is_some() {
        return Err(Violation::new(
            "admin_token_file",
            "set either `admin_token` or `admin_token_file`, not both",
        ));
    }
    if token.is_some_and(|t| t.expose().trim().is_empty()) {
        return Err(Violation::new("admin_token", "must not be empty"));
    }
    Ok(())
}

/// Whitespace or control characters, which no name or path may hold: the
/// one rule for node names (gateway and node) and paths.
pub(crate) fn has_blank(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Reads and validates a config file.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses and validates config text; `origin` names it in errors.
pub fn parse<T: DeserializeOwned + Validate>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let value: T = toml::from_str(text).map_err(|e| ConfigError::Invalid {
        location: location_of(text, origin, e.span().map_or(0, |s| s.start)),
        message: e.message().trim_end().to_owned(),
    })?;
    value.validate().map_err(|v| ConfigError::Invalid {
        location: location_of(text, origin, key_offset(text, &v.key)),
        message: format!("`{}`: {}", v.key, v.message),
    })?;
    Ok(value)
}

/// 1-based line and column (in characters) of a byte offset.
fn location_of(text: &str, origin: &str, offset: usize) -> Location {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Location {
        origin: origin.to_owned(),
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

/// Byte offset of the value at a dotted key path (`a.b[2].c`), or of the
/// deepest part of it that exists; 0 when nothing matches.
fn key_offset(text: &str, key: &str) -> usize {
    use toml::de::{DeTable, DeValue};
    let Ok(root) = DeTable::parse(text) else {
        return 0;
    };
    let mut offset = 0;
    let mut table = root.get_ref();
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let (name, index) = match part.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((_, value)) = table.iter().find(|(k, _)| k.get_ref() == name) else {
            return offset;
        };
        offset = value.span().start;
        let mut value = value;
        if let (Some(i), DeValue::Array(items)) = (index, value.get_ref()) {
            let Some(item) = items.get(i) else {
                return offset;
            };
            offset = item.span().start;
            value = item;
        }
        match value.get_ref() {
            DeValue::Table(t) if parts.peek().is_some() => table = t,
            _ => return offset,
        }
    }
    offset
}

/// For a test whose outcome an environment variable would change (a
/// secret or token it supplies): with `var` set, runs `test` again in a
/// child process of this test binary without it, and asserts that run
/// passed (`true`: the caller has nothing left to do). So the test runs,
/// rather than passing unchecked, whatever the environment.
#[cfg(test)]
pub(crate) fn rerun_without_env(test: &str, var: &str) -> bool {
    if std::env::var_os(var).is_none() {
        return false;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args([test, "--exact"])
        .env_remove(var)
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test} without {var}:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        id: u32,
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), Violation> {
            match self.items.iter().position(|i| i.id == 0) {
                Some(i) => Err(Violation::new(format!("items[{i}].id"), "must not be 0")),
                None => Ok(()),
            }
        }
    }

    #[test]
    fn valid_text_parses() {
        let s: Sample = parse("name = \"x\"\n[[items]]\nid = 1\n", "s.toml").unwrap();
        assert_eq!((s.name.as_str(), s.items.len()), ("x", 1));
    }

    #[test]
    fn syntax_error_points_at_line_and_column() {
        let err = parse::<Sample>("name = \"x\"\nitems = [ oops ]\n", "s.toml").unwrap_err();
        let loc = err.location().unwrap();
        assert_eq!((loc.line, loc.column), (2, 11), "{err}");
        assert!(err.to_string().starts_with("s.toml:2:11: "), "{err}");
    }

    #[test]
    fn unknown_key_is_refused_with_its_position() {
        let err = parse::<Sample>("name = \"x\"\nnmae = 1\n", "s.toml").unwrap_err();
        assert!(err.to_string().starts_with("s.toml:2:1: "), "{err}");
        assert!(err.to_string().contains("unknown field `nmae`"), "{err}");
    }

    #[test]
    fn validation_error_points_at_the_offending_value() {
        let text = "name = \"x\"\n[[items]]\nid = 1\n[[items]]\nid = 0\n";
        let err = parse::<Sample>(text, "s.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "s.toml:5:6: `items[1].id`: must not be 0",
            "{err}"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load::<Sample>(Path::new("/nonexistent/s.toml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/s.toml: cannot read config")
        );
    }
}
