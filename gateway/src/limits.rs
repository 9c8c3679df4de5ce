//! Protection of the public listener: header read timeout, header size and
//! count and body size (the number of open connections is capped by
//! [`stickyio_shared::connection_limit`]).
//!
//! The head limits are applied by [`crate::client_wire`] (431 for too large
//! or too many headers, 400 for a malformed request) and the header read
//! timeout by [`crate::client_conn`] (the connection is closed). The body
//! limit is checked up front from `Content-Length` and counted while a
//! chunked body streams ([`BodyLimit`]): 413.

use crate::client_wire::BodyLength;

/// A declared `Content-Length` above `max`.
pub fn declared_too_large(body: BodyLength, max: u64) -> bool {
    matches!(body, BodyLength::Length(n) if n > max)
}

/// The request body went past the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body exceeds {0} bytes")]
pub struct TooLarge(pub u64);

/// Counts the bytes of one request body against the limit.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    max: u64,
    taken: u64,
}

impl BodyLimit {
    pub fn new(max: u64) -> Self {
        BodyLimit { max, taken: 0 }
    }

    /// `n` more bytes of the body.
    pub fn take(&mut self, n: usize) -> Result<(), TooLarge> {
        self.taken = self.taken.saturating_add(n as u64);
        if self.taken > self.max {
            return Err(TooLarge(self.max));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_length_is_checked() {
        assert!(!declared_too_large(BodyLength::None, 10));
        assert!(!declared_too_large(BodyLength::Chunked, 10));
        assert!(declared_too_large(BodyLength::Length(11), 10));
        assert!(!declared_too_large(BodyLength::Length(10), 10));
    }

    #[test]
    fn streamed_bytes_are_counted() {
        let mut limit = BodyLimit::new(10);
        assert_eq!(limit.take(6), Ok(()));
        assert_eq!(limit.take(4), Ok(()));
        assert_eq!(limit.take(1), Err(TooLarge(10)));
    }
}
