//! Bounded waits: poll a condition until it holds, a bounded number of
//! times and for a bounded time, instead of sleeping and hoping.

use std::future::Future;
use std::time::Duration;

use tokio::time::{sleep, timeout};

/// Upper bound of any single wait in the tests.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two polls of [`eventually`].
const POLL: Duration = Duration::from_millis(50);

/// Polls `check` every 50 ms until it holds: at most `TIMEOUT / 50 ms`
/// polls, and at most twice [`TIMEOUT`] in all (a check that hangs counts
/// too). Panics naming `what` otherwise.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let polls = TIMEOUT.as_millis() / POLL.as_millis();
    let outcome = timeout(TIMEOUT * 2, async {
        for _ in 0..polls {
            if check().await {
                return true;
            }
            sleep(POLL).await;
        }
        false
    })
    .await;
    assert_eq!(outcome, Ok(true), "timed out waiting until {what}");
}
