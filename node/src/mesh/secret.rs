//! The mesh secret: compared in constant time and never printed.
//!
//! A peer proves it belongs to the mesh by sending the secret when it joins
//! `/cluster`. A comparison that stopped at the first differing byte would let
//! a patient attacker learn the secret byte by byte from response times.

use std::fmt;
use std::sync::Arc;

use subtle::ConstantTimeEq;

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
        let secret = self.0.as_bytes();
        let candidate = candidate.as_bytes();
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
}
