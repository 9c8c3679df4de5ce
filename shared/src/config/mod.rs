//! Loading TOML config files with errors that point at `file:line:column`.
//!
//! Both binaries share one loader so every config mistake, whether a TOML
//! syntax error, an unknown key, a bad value or a cross-field rule, is
//! reported the same way and can be fixed without guessing.
//!
//! Parsing reads the text and nothing else: the few rules that the
//! environment can satisfy get it as an [`Env`], and the files and
//! variables that hold secrets are read in [`sources`].

mod addr;
mod duration;
pub mod gateway;
pub mod node;
pub mod sources;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use duration::Duration;
pub use sources::Env;

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

    /// The same violation with why the rule is there, in parentheses.
    pub(crate) fn because(mut self, why: &str) -> Self {
        self.message = format!("{} ({why})", self.message);
        self
    }
}

/// A config type: deserialisable, then checked as a whole.
pub trait Validate {
    /// The rules on what the file says; a function of the file alone.
    fn validate(&self) -> Result<(), Violation>;

    /// The rules that a source outside the file can satisfy (a secret given
    /// only in the environment): `env` answers for the environment, so the
    /// rules never read the process's own.
    fn validate_sources(&self, _env: Env<'_>) -> Result<(), Violation> {
        Ok(())
    }
}

/// A deserialiser's error that names its key (`nodes[2].addr`), for a rule
/// a value's own type cannot state: [`parse`] points at that key.
pub(crate) fn keyed<E: serde::de::Error>(key: &str, message: impl fmt::Display) -> E {
    E::custom(format!("`{key}`: {message}"))
}

/// The one rule for a value given inline or in a file (`key`, `key_file`,
/// in the table `table`, such as `cluster.`): one or the other.
pub(crate) fn inline_or_file(
    table: &str,
    key: &str,
    inline: bool,
    file: bool,
) -> Result<(), Violation> {
    if inline && file {
        return Err(Violation::new(
            format!("{table}{key}_file"),
            format!("set either `{key}` or `{key}_file`, not both"),
        ));
    }
    Ok(())
}

/// The rules for a secret's keys (`key`, `key_file`, in `table`), the admin
/// tokens and the mesh secret alike: one or the other, and an inline one
/// not blank.
pub(crate) fn check_secret_keys(
    table: &str,
    key: &str,
    inline: Option<&str>,
    file: bool,
) -> Result<(), Violation> {
    inline_or_file(table, key, inline.is_some(), file)?;
    if inline.is_some_and(|s| s.trim().is_empty()) {
        return Err(Violation::new(format!("{table}{key}"), "must not be empty"));
    }
    Ok(())
}

/// The keys of every admin listener's token (`admin_token`,
/// `admin_token_file`), in `gateway.toml` and `node.toml` alike.
pub(crate) fn check_admin_token(
    token: Option<&crate::secret::Secret>,
    file: Option<&Path>,
) -> Result<(), Violation> {
    check_secret_keys(
        "",
        "admin_token",
        token.map(crate::secret::Secret::expose),
        file.is_some(),
    )
}

/// Whitespace or control characters, which no name or path may hold.
pub(crate) fn has_blank(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The one rule for node names, in `gateway.toml` and `node.toml` alike: 1
/// to 255 bytes (a route tag carries a name behind a one-byte length), no
/// whitespace or control characters.
pub(crate) fn check_name(key: &str, name: &str) -> Result<(), Violation> {
    if name.is_empty() || has_blank(name) || name.len() > 255 {
        return Err(Violation::new(
            key,
            "must be 1 to 255 bytes, without spaces or control characters",
        ));
    }
    Ok(())
}

/// The one lower bound rule, for counts and durations alike: `value` must be
/// `min` or more. `unit` (may be empty) follows the number in the message.
pub(crate) fn at_least<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    min: T,
    unit: &str,
) -> Result<(), Violation> {
    if value >= min {
        return Ok(());
    }
    Err(Violation::new(
        key,
        format!("must be at least {min}{}", spaced(unit)),
    ))
}

/// The one range rule: `value` from `min` to `max`, both included.
pub(crate) fn between<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    (min, max): (T, T),
    unit: &str,
) -> Result<(), Violation> {
    if min <= value && value <= max {
        return Ok(());
    }
    Err(Violation::new(
        key,
        format!("must be between {min} and {max}{}", spaced(unit)),
    ))
}

/// The one rule for a duration that something waits or repeats on: zero
/// would spin or never wait at all.
pub(crate) fn positive(key: &str, value: Duration) -> Result<(), Violation> {
    if value.get().is_zero() {
        return Err(Violation::new(key, "must be greater than 0"));
    }
    Ok(())
}

fn spaced(unit: &str) -> String {
    if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    }
}

/// Reads and validates a config file, its source rules against the
/// process's environment.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    load_in(path, Env::process())
}

/// Reads and validates a config file, its source rules against `env`.
pub fn load_in<T: DeserializeOwned + Validate>(
    path: &Path,
    env: Env<'_>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_in(&text, &path.display().to_string(), env)
}

/// Parses and validates config text, its source rules against the process's
/// environment; `origin` names it in errors.
pub fn parse<T: DeserializeOwned + Validate>(text: &str, origin: &str) -> Result<T, ConfigError> {
    parse_in(text, origin, Env::process())
}

/// Parses and validates config text, its source rules against `env`;
/// `origin` names it in errors. Reads nothing else.
pub fn parse_in<T: DeserializeOwned + Validate>(
    text: &str,
    origin: &str,
    env: Env<'_>,
) -> Result<T, ConfigError> {
    let value: T = toml::from_str(text).map_err(|e| {
        let message = e.message().trim_end().to_owned();
        // An error from `keyed` is located at its key; toml's own at its span.
        let offset = named_key(&message)
            .map(|key| key_offset(text, key))
            .filter(|&at| at > 0)
            .or(e.span().map(|s| s.start))
            .unwrap_or(0);
        ConfigError::Invalid {
            location: location_of(text, origin, offset),
            message,
        }
    })?;
    let located = |v: Violation| ConfigError::Invalid {
        location: location_of(text, origin, key_offset(text, &v.key)),
        message: format!("`{}`: {}", v.key, v.message),
    };
    value.validate().map_err(located)?;
    value.validate_sources(env).map_err(located)?;
    Ok(value)
}

/// [`parse`] with no environment, for tests that must not depend on the
/// caller's.
#[cfg(test)]
pub(crate) fn parse_without_env<T: DeserializeOwned + Validate>(
    text: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    parse_in(text, origin, Env::empty())
}

/// The key an error made by [`keyed`] names.
fn named_key(message: &str) -> Option<&str> {
    message
        .strip_prefix('`')?
        .split_once("`: ")
        .map(|(key, _)| key)
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
