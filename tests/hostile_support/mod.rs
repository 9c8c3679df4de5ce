//! What the gateway's and the node's hostile-client tests share: the
//! resident memory of a spawned process, and the one websocket frame a
//! hostile client needs. Included by path from `gateway/tests/hostile.rs`
//! and `node/tests/hostile.rs`; Cargo does not build this folder as a test.

/// Resident memory of process `pid`, in KiB, from /proc.
pub fn rss_kb(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process is alive");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A client-to-server websocket text frame (clients must mask).
pub fn masked_text_frame(text: &str) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let payload = text.as_bytes();
    assert!(payload.len() < 126);
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}
