//! The secret comparison's cost does not depend on the candidate's bytes.
//!
//! Timing is too noisy on a shared machine to show this, so the test counts
//! instructions instead: it runs itself under valgrind's callgrind, which
//! counts exactly and repeatably, once per candidate, and compares the
//! counts of the comparison loop. A comparison that stopped at the first
//! differing byte (`==`) costs a fraction as much for an early difference
//! as for a late one, and fails here.

// A panic is how a test fails, with its message; the support modules' `pub`
// items are their interface to the test files that include them.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::hint::black_box;
use std::path::Path;
use std::process::Command;

use stickyio_shared::secret::Secret;

/// Set in the child run: which candidate to compare.
const PROBE: &str = "STICKYIO_CONSTANT_TIME_PROBE";
const ROUNDS: usize = 200;
const LEN: usize = 512;

fn secret() -> String {
    "s".repeat(LEN)
}

/// A candidate of the secret's length, differing from it where `which` says.
fn candidate(which: &str) -> String {
    let mut bytes = secret().into_bytes();
    match which {
        "equal" => {}
        "first" => bytes[0] = b'x',
        "last" => bytes[LEN - 1] = b'x',
        "all" => bytes.fill(b'x'),
        other => panic!("unknown probe {other}"),
    }
    String::from_utf8(bytes).expect("ascii")
}

/// What callgrind measures: everything under this function, nothing else.
#[inline(never)]
fn compare_rounds(secret: &Secret, candidate: &str) -> usize {
    // A loop, not a closure: callgrind would toggle collection off on
    // entering `compare_rounds::{closure}`.
    let mut matched = 0;
    for _ in 0..ROUNDS {
        matched += usize::from(black_box(secret).matches(black_box(candidate)));
    }
    matched
}

/// Instructions callgrind counted inside `compare_rounds` for `which`.
fn instructions(which: &str, out: &Path) -> u64 {
    let test = std::env::current_exe().expect("test binary");
    let run = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--toggle-collect=*compare_rounds*")
        .arg(&test)
        .args([
            "--exact",
            "secret_comparison_cost_does_not_depend_on_the_candidate",
            "--test-threads=1",
        ])
        .env(PROBE, which)
        .output()
        .expect("run valgrind (apt package valgrind; scripts/test.sh installs it)");
    assert!(
        run.status.success(),
        "valgrind run for {which} failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let profile = std::fs::read_to_string(out).expect("callgrind output");
    profile
        .lines()
        .find_map(|l| l.strip_prefix("summary: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a summary line in the callgrind output")
}

#[test]
fn secret_comparison_cost_does_not_depend_on_the_candidate() {
    let secret = Secret::new(secret());
    if let Ok(which) = std::env::var(PROBE) {
        let matched = compare_rounds(&secret, &candidate(&which));
        assert_eq!(matched == ROUNDS, which == "equal");
        return;
    }
    let dir = std::env::temp_dir().join(format!("stickyio-constant-time-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let probes = ["equal", "first", "last", "all"];
    let counts: Vec<(&str, u64)> = std::thread::scope(|scope| {
        let runs: Vec<_> = probes
            .iter()
            .map(|&which| {
                let out = dir.join(format!("{which}.out"));
                scope.spawn(move || (which, instructions(which, &out)))
            })
            .collect();
        runs.into_iter().map(|r| r.join().expect("probe")).collect()
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (least, most) = counts
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), &(_, n)| (lo.min(n), hi.max(n)));
    assert!(
        least > (ROUNDS * LEN) as u64,
        "every byte is looked at in every round: {counts:?}"
    );
    assert_eq!(
        least, most,
        "instructions to compare a {LEN}-byte secret {ROUNDS} times depend on where the candidate differs: {counts:?}"
    );
}
