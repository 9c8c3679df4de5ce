//! Durations written as strings (`"5s"`, `"250ms"`, `"1m 30s"`) in config files.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `std::time::Duration` that reads and writes as a humantime string, so a
/// bare number (ambiguous: seconds? milliseconds?) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"5s\" or \"250ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                humantime::parse_duration(v).map(Duration).map_err(|e| {
                    E::custom(format!("invalid duration {v:?}: {e} (write e.g. \"5s\")"))
                })
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        d: Duration,
    }

    #[test]
    fn parses_humantime_strings() {
        let t: T = toml::from_str("d = \"1m 30s\"").unwrap();
        assert_eq!(t.d.get(), std::time::Duration::from_secs(90));
        let t: T = toml::from_str("d = \"250ms\"").unwrap();
        assert_eq!(t.d.get(), std::time::Duration::from_millis(250));
    }

    #[test]
    fn refuses_bare_numbers_and_garbage() {
        let e = toml::from_str::<T>("d = 5").err().unwrap().to_string();
        assert!(e.contains("a duration string"), "{e}");
        let e = toml::from_str::<T>("d = \"5 parsecs\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("invalid duration \"5 parsecs\""), "{e}");
    }

    #[test]
    fn displays_back_as_a_string() {
        assert_eq!(Duration::from_secs(5).to_string(), "5s");
    }
}
