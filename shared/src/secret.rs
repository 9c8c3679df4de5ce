//! Shared secrets (the mesh secret, the gateway's admin token): compared in
//! constant time and never printed.
//!
//! A peer proves it belongs to the mesh by sending the secret when it joins
//! `/cluster`; an operator proves it may use the admin listener with a bearer
//! token. A comparison that stopped at the first differing byte would let a
//! patient attacker learn the secret byte by byte from response times.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;

/// What `check` and any other rendering of a config shows instead of a secret.
pub const REDACTED: &str = "<redacted>";

#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(secret: impl Into<Arc<str>>) -> Self {
        Secret(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when `candidate` is the secret. The time taken depends on the
    /// secret's length only, never on the candidate's bytes or length.
    pub fn matches(&self, candidate: &str) -> bool {
        Self::bytes_match(self.0.as_bytes(), candidate.as_bytes())
    }

    /// True when `candidate` equals `secret`, in time that depends on the
    /// length of `secret` only (also for MACs, which are secrets to forge).
    pub fn bytes_match(secret: &[u8], candidate: &[u8]) -> bool {
        let mut same = (secret.len() as u64).ct_eq(&(candidate.len() as u64));
        for (i, byte) in secret.iter().enumerate() {
            let other = candidate.get(i).copied().unwrap_or(!byte);
            same &= byte.ct_eq(&other);
        }
        bool::from(same)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Constant-time, like [`Secret::matches`]: configs holding secrets are
/// compared on reload.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.expose())
    }
}

impl Eq for Secret {}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// Rendered as [`REDACTED`]: a printed config never shows the secret.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_exact_secret() {
        let s = Secret::new("s3cret");
        assert!(s.matches("s3cret"));
        for wrong in [
            "", "s3cre", "s3cret!", "S3cret", "s3creT", "xxxxxx", "s3cret\0",
        ] {
            assert!(!s.matches(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secret::new("s3cret");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(s.expose(), "s3cret");
    }

    #[test]
    fn serialising_never_shows_the_secret() {
        let s = Secret::new("s3cret");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
        let back: Secret = serde_json::from_str("\"s3cret\"").unwrap();
        assert_eq!(back, s);
        assert_ne!(back, Secret::new("s3creT"));
    }
}
