//! What the processes under test cost, read from `/proc`: resident memory
//! (W4) and CPU time over a measured window (every workload), each summed
//! over a process and its children (nginx and Node.js workers).

use std::collections::BTreeMap;

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::workloads::Window;

/// `USER_HZ`, fixed at 100 by the Linux ABI for `/proc/<pid>/stat`.
const TICKS_PER_SECOND: f64 = 100.0;

/// `pids` and their children, each once.
fn with_children(pids: &[u32]) -> Vec<u32> {
    let mut all: Vec<u32> = pids.to_vec();
    for &pid in pids {
        all.extend(children(pid));
    }
    all.sort_unstable();
    all.dedup();
    all
}

/// Sum of `VmRSS` over `pids` and their children, in KiB; a process that
/// is gone counts 0.
pub fn rss_kib(pids: &[u32]) -> u64 {
    with_children(pids)
        .iter()
        .map(|&pid| vm_rss(pid).unwrap_or(0))
        .sum()
}

fn vm_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// User + system CPU seconds a process has used so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// CPU used during a window: per process under test (with its children)
/// and by the load generator itself, as a share of one core.
#[derive(Debug, Default, Serialize)]
pub struct CpuUse {
    pub cores_by_pid: BTreeMap<u32, f64>,
    pub loadgen_cores: f64,
}

fn snapshot(pids: &[u32]) -> Vec<f64> {
    pids.iter()
        .map(|&pid| {
            with_children(&[pid])
                .iter()
                .filter_map(|&p| cpu_seconds(p))
                .sum()
        })
        .collect()
}

/// Samples CPU time at the window's start and end, in the background.
pub fn cpu_over(window: Window, pids: Vec<u32>) -> JoinHandle<CpuUse> {
    tokio::spawn(async move {
        let me = std::process::id();
        tokio::time::sleep_until(window.start).await;
        let before = snapshot(&pids);
        let me_before = cpu_seconds(me).unwrap_or(0.0);
        tokio::time::sleep_until(window.end).await;
        let after = snapshot(&pids);
        let me_after = cpu_seconds(me).unwrap_or(0.0);
        let seconds = (window.end - window.start).as_secs_f64().max(f64::EPSILON);
        let per_core = |a: f64, b: f64| ((a - b) / seconds * 100.0).round() / 100.0;
        CpuUse {
            cores_by_pid: pids
                .iter()
                .zip(after.iter().zip(&before))
                .map(|(&pid, (a, b))| (pid, per_core(*a, *b)))
                .collect(),
            loadgen_cores: per_core(me_after, me_before),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_rss_is_positive_and_a_missing_pid_counts_zero() {
        assert!(rss_kib(&[std::process::id()]) > 0);
        assert_eq!(rss_kib(&[u32::MAX]), 0);
    }

    #[test]
    fn own_cpu_time_is_read_and_grows() {
        let before = cpu_seconds(std::process::id()).expect("own stat");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = cpu_seconds(std::process::id()).expect("own stat");
        assert!(after > before, "{before} -> {after}");
        assert_eq!(cpu_seconds(u32::MAX), None);
    }
}
