//! `publish_ack = "replicated"` over the mesh: the publisher's ack waits
//! until at least one peer confirms it holds the publication (delivered and
//! in its history), so a resume finds it even if this node dies next.
//!
//! A [`Waiter`] travels with the frame to every link. The first peer that
//! answers `held` completes it; it completes as unconfirmed when every link
//! failed to get the frame across, or after [`CONFIRM_TIMEOUT`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::topics::{Handed, Then};

/// Longest wait for a peer's confirmation: long enough for a loaded peer
/// (the chaos run on two busy cores), short enough for a client to retry.
pub(super) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Waiter {
    then: Mutex<Option<Then>>,
    /// Links that may still confirm.
    links: AtomicUsize,
}

impl Waiter {
    /// A waiter over `links` links; completes unconfirmed after
    /// [`CONFIRM_TIMEOUT`] unless a peer confirms first. Needs a Tokio runtime.
    pub(super) fn start(then: Then, links: usize) -> Arc<Waiter> {
        Waiter::start_with(then, links, CONFIRM_TIMEOUT)
    }

    fn start_with(then: Then, links: usize, timeout: Duration) -> Arc<Waiter> {
        let waiter = Arc::new(Waiter {
            then: Mutex::new(Some(then)),
            links: AtomicUsize::new(links),
        });
        if links == 0 {
            waiter.finish(Handed::Unconfirmed(
                "this node has no peer links".to_owned(),
            ));
            return waiter;
        }
        let timer = Arc::downgrade(&waiter);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(waiter) = timer.upgrade() {
                waiter.finish(Handed::Unconfirmed(format!(
                    "no other node confirmed holding it within {timeout:?}; it may be lost if this node fails"
                )));
            }
        });
        waiter
    }

    /// A peer holds it.
    pub(super) fn confirmed(&self) {
        self.finish(Handed::Taken);
    }

    /// One link will never confirm (down, full, lost): when it was the last,
    /// the publish completes unconfirmed.
    pub(super) fn failed(&self, why: &str) {
        if self.links.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish(Handed::Unconfirmed(format!(
                "no other node confirmed holding it ({why}); it may be lost if this node fails"
            )));
        }
    }

    fn finish(&self, outcome: Handed) {
        let then = self
            .then
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(then) = then {
            then(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn waiter(links: usize) -> (Arc<Waiter>, mpsc::Receiver<Handed>) {
        let (tx, rx) = mpsc::channel();
        let then: Then = Box::new(move |outcome| drop(tx.send(outcome)));
        (Waiter::start(then, links), rx)
    }

    #[tokio::test]
    async fn the_first_confirmation_wins_and_completes_once() {
        let (w, rx) = waiter(2);
        w.failed("link_down");
        w.confirmed();
        w.confirmed();
        w.failed("queue_full");
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [Handed::Taken]);
    }

    #[tokio::test]
    async fn every_link_failing_is_unconfirmed() {
        let (w, rx) = waiter(2);
        w.failed("link_down");
        assert!(rx.try_recv().is_err());
        w.failed("queue_full");
        let outcome = rx.try_recv().unwrap();
        assert!(
            matches!(&outcome, Handed::Unconfirmed(why) if why.contains("queue_full")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn silence_times_out() {
        let (tx, rx) = mpsc::channel();
        let then: Then = Box::new(move |outcome| drop(tx.send(outcome)));
        let _w = Waiter::start_with(then, 1, Duration::from_millis(20));
        assert!(rx.try_recv().is_err(), "not before the timeout");
        let outcome = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(
            matches!(&outcome, Ok(Handed::Unconfirmed(why)) if why.contains("20ms")),
            "{outcome:?}"
        );
    }
}
