//! Shared secrets (the mesh secret, the gateway's admin token): compared in
//! constant time and never printed.
//!
//! A peer proves it belongs to the mesh by sending the secret when it joins
//! `/cluster`; an operator proves it may use the admin listener with a bearer
//! token. A comparison that stopped at the first differing byte would let a
//! patient attacker learn the secret byte by byte from response times.

use std::fmt;
use std::path::{Path, PathBuf};
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

/// A secret file that could not be used; `key` names the config key.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{key} {}: cannot read: {source}", .path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key} {}: the file is empty", .path.display())]
    Empty { key: &'static str, path: PathBuf },
}

/// A secret given inline, else in `file` (surrounding whitespace trimmed, so
/// `echo secret > file` works), else in the environment variable `env`.
/// `file_key` names the file's config key in errors.
pub fn resolve(
    inline: Option<&str>,
    file: Option<&Path>,
    file_key: &'static str,
    env: &str,
) -> Result<Option<String>, SecretError> {
    if let Some(s) = inline {
        return Ok(Some(s.to_owned()));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            key: file_key,
            path: path.to_owned(),
            source,
        })?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(SecretError::Empty {
                key: file_key,
                path: path.to_owned(),
            });
        }
        return Ok(Some(secret.to_owned()));
    }
    Ok(std::env::var(env).ok().filter(|s| !s.is_empty()))
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

    #[test]
    fn files_are_trimmed_and_empty_ones_refused() {
        let dir = std::env::temp_dir().join(format!("stickyio-secret-rs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  tok\n").unwrap();
        let env = "STICKYIO_TEST_UNSET_SECRET_VARIABLE";
        assert_eq!(
            resolve(None, Some(&file), "admin_token_file", env).unwrap(),
            Some("tok".to_owned())
        );
        assert_eq!(
            resolve(Some("inline"), Some(&file), "k", env).unwrap(),
            Some("inline".to_owned())
        );
        std::fs::write(&file, "\n").unwrap();
        let err = resolve(None, Some(&file), "admin_token_file", env).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("admin_token_file {}: the file is empty", file.display())
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let err = resolve(None, Some(&file), "admin_token_file", env).unwrap_err();
        assert!(err.to_string().contains(": cannot read: "), "{err}");
        assert_eq!(resolve(None, None, "k", env).unwrap(), None);
    }
}
