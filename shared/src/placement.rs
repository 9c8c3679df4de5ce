//! Which node a client belongs to: weighted rendezvous (highest random
//! weight) hashing over node *names*.
//!
//! Every gateway build and every replica must send one client to one node, so
//! the hash is fully specified here (SipHash-2-4 with a fixed key, written out
//! below, pinned by golden vectors) instead of a hasher whose output may
//! change between versions or CPU features. Rendezvous hashing moves only the
//! keys of an added or removed node, and its ranked order is the failover
//! order: when the first choice is down, the second takes its clients.

use std::fmt;
use std::net::IpAddr;

/// The SipHash key of placement, version 1. Changing it moves every client.
pub const KEY: [u8; 16] = *b"stickyio-hrw-v1!";

/// A client's routing identity: its address masked to the configured prefix,
/// with IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) treated as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    network: IpAddr,
    prefix: u8,
}

impl ClientKey {
    /// Masks `ip` to `ipv4_prefix` or `ipv6_prefix` bits (clamped to 32 and 128).
    pub fn new(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> Self {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => {
                let prefix = ipv4_prefix.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                ClientKey {
                    network: IpAddr::V4((u32::from(v4) & mask).into()),
                    prefix,
                }
            }
            IpAddr::V6(v6) => {
                let prefix = ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                ClientKey {
                    network: IpAddr::V6((u128::from(v6) & mask).into()),
                    prefix,
                }
            }
        }
    }

    /// The masked address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The hash state after this key's part of every node's hash input: a
    /// family tag and the masked address bytes. The name's UTF-8 bytes
    /// follow; the tag fixes the address length, so the concatenation is
    /// unambiguous. Computed once per ranking, not once per node.
    fn hasher(&self) -> Sip24 {
        let mut h = Sip24::new(&KEY);
        match self.network {
            IpAddr::V4(v4) => {
                h.write(&[4]);
                h.write(&v4.octets());
            }
            IpAddr::V6(v6) => {
                h.write(&[6]);
                h.write(&v6.octets());
            }
        }
        h
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; every other address unchanged. A dual-stack
/// listener reports IPv4 peers in the mapped form.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The 64-bit placement hash of `(key, node)`: SipHash-2-4 keyed with [`KEY`].
pub fn hash(key: &ClientKey, node: &str) -> u64 {
    node_hash(key.hasher(), node)
}

/// Streamed from the key's state, not concatenated into a buffer: no
/// allocation per node on the routing path of every new client.
fn node_hash(mut key_state: Sip24, node: &str) -> u64 {
    key_state.write(node.as_bytes());
    key_state.finish()
}

/// Rendezvous score of a node with `weight` for `key`; the highest wins.
///
/// The hash becomes `u` uniform in (0, 1) and the score is `-weight / ln(u)`,
/// the logarithmic method: a node's share of keys is proportional to its
/// weight, and adding or removing one node moves only that node's share.
pub fn score(key: &ClientKey, node: &str, weight: u32) -> f64 {
    score_of(hash(key, node), weight)
}

fn score_of(hash: u64, weight: u32) -> f64 {
    // 53 high bits and a half-step offset: exactly representable, never 0 or 1.
    let u = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

/// `nodes` ordered by score for `key`: first choice first, then the failover
/// order. `name_weight` reads a node's name and weight. Ties (never seen in
/// practice) go to the smaller name so the order stays deterministic.
pub fn rank<'a, T>(
    key: &ClientKey,
    nodes: &'a [T],
    name_weight: impl Fn(&T) -> (&str, u32),
) -> Vec<&'a T> {
    let key_state = key.hasher();
    let mut scored: Vec<Scored<'a, T>> = nodes
        .iter()
        .map(|item| Scored {
            order: node_hash(key_state.clone(), name_weight(item).0),
            item,
        })
        .collect();
    sort_by_score(&mut scored, &name_weight);
    scored.into_iter().map(|s| s.item).collect()
}

/// A node being ranked: `order` starts as its hash and ends as what it
/// sorts by. Small, so the sort moves little.
struct Scored<'a, T> {
    order: u64,
    item: &'a T,
}

/// Sorts by descending score, ties by ascending name.
///
/// With equal weights the score `-w / ln(u)` only grows with `u`, so the
/// hash order is the score order and no logarithm is needed (most pools;
/// `ln` was a third of a ranking's time). Rounding can make two scores of
/// distinct but very close `u` equal, and then the name decides: if any two
/// neighbours in hash order are that close (within 2^-20 of each other,
/// far wider than the few ulps of rounding in `ln` and the division), the
/// exact scores are computed, so the order is the same bit for bit.
fn sort_by_score<T>(scored: &mut [Scored<'_, T>], name_weight: &impl Fn(&T) -> (&str, u32)) {
    let by_order = |a: &Scored<'_, T>, b: &Scored<'_, T>| {
        b.order
            .cmp(&a.order)
            .then_with(|| name_weight(a.item).0.cmp(name_weight(b.item).0))
    };
    let weight = |s: &Scored<'_, T>| name_weight(s.item).1;
    // A weight of 0 scores 0 whatever the hash (the name alone decides).
    let equal_weights = scored.windows(2).all(|p| weight(&p[0]) == weight(&p[1]))
        && scored.first().is_none_or(|s| weight(s) > 0);
    if equal_weights {
        for s in scored.iter_mut() {
            s.order >>= 11; // `u`'s numerator, as in `score_of`.
        }
        scored.sort_unstable_by(by_order);
        let near_tie = scored.windows(2).any(|pair| {
            let (high, low) = (pair[0].order, pair[1].order);
            high != low && high - low <= high >> 20
        });
        if !near_tie {
            return;
        }
        for s in scored.iter_mut() {
            s.order <<= 11;
        }
    }
    // Scores are never negative (nor NaN), and the bits of non-negative
    // floats order as the floats do: integer compares sort faster.
    for s in scored.iter_mut() {
        s.order = score_of(s.order, weight(s)).to_bits();
    }
    scored.sort_unstable_by(by_order);
}

/// SipHash-2-4 (Aumasson and Bernstein, 2012) over input fed in pieces:
/// the hash of their concatenation.
#[derive(Clone)]
struct Sip24 {
    v: [u64; 4],
    /// Bytes not yet compressed (fewer than 8), little-endian in the low bits.
    tail: u64,
    tail_len: usize,
    /// Total input length; only its low byte enters the hash.
    len: usize,
}

impl Sip24 {
    fn new(key: &[u8; 16]) -> Sip24 {
        let word = |half: &[u8]| half.iter().rev().fold(0, |w, &b| w << 8 | u64::from(b));
        let (k0, k1) = (word(&key[..8]), word(&key[8..]));
        Sip24 {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            tail_len: 0,
            len: 0,
        }
    }

    /// Word-wise, with pieces shorter than a word loaded by overlapping
    /// reads ([`load_le`]): inputs here are a few bytes of address and a
    /// short node name, so the pieces are what costs.
    fn write(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len());
        if self.tail_len > 0 {
            let take = (8 - self.tail_len).min(data.len());
            self.tail |= load_le(&data[..take]) << (8 * self.tail_len);
            self.tail_len += take;
            data = &data[take..];
            if self.tail_len < 8 {
                return;
            }
            self.compress(self.tail);
        }
        let mut words = data.chunks_exact(8);
        for word in &mut words {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(word);
            self.compress(u64::from_le_bytes(bytes));
        }
        let rest = words.remainder();
        (self.tail, self.tail_len) = (load_le(rest), rest.len());
    }

    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        sip_rounds(&mut self.v, 2);
        self.v[0] ^= m;
    }

    fn finish(mut self) -> u64 {
        let last = self.tail | ((self.len as u64 & 0xff) << 56);
        self.compress(last);
        self.v[2] ^= 0xff;
        sip_rounds(&mut self.v, 4);
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }
}

/// Up to 7 bytes as a little-endian word, with at most two loads and no
/// loop: bytes `n-4..n` overlap `0..4` (or the middle byte overlaps the
/// ends) and carry the same values where they do.
fn load_le(b: &[u8]) -> u64 {
    let n = b.len();
    match n {
        0 => 0,
        1..=3 => {
            u64::from(b[0])
                | u64::from(b[n / 2]) << (8 * (n / 2))
                | u64::from(b[n - 1]) << (8 * (n - 1))
        }
        _ => {
            let lo = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let hi = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
            u64::from(lo) | u64::from(hi) << (8 * (n - 4))
        }
    }
}

fn sip_rounds(v: &mut [u64; 4], rounds: usize) {
    for _ in 0..rounds {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    fn first<'a>(key: &ClientKey, nodes: &'a [String]) -> &'a str {
        rank(key, nodes, |n| (n.as_str(), 1))[0]
    }

    fn v4(s: &str) -> ClientKey {
        ClientKey::new(s.parse().unwrap(), 32, 64)
    }

    /// Seeded random IPv4 keys (SplitMix64), the same on every run.
    fn random_keys(seed: u64, count: usize) -> Vec<ClientKey> {
        let mut state = seed;
        (0..count)
            .map(|_| {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                let ip = Ipv4Addr::from((z ^ (z >> 31)) as u32);
                ClientKey::new(IpAddr::V4(ip), 32, 64)
            })
            .collect()
    }

    fn siphash24(key: &[u8; 16], data: &[u8]) -> u64 {
        let mut h = Sip24::new(key);
        h.write(data);
        h.finish()
    }

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // From the SipHash paper, appendix A, and the reference implementation's vectors.
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(&key, &msg), 0xa129_ca61_49be_45e5);
        assert_eq!(siphash24(&key, &[]), 0x726f_db47_dd0e_0e31);
        let msg: Vec<u8> = (0..8).collect();
        assert_eq!(siphash24(&key, &msg), 0x93f5_f579_9a93_2462);
    }

    #[test]
    #[allow(deprecated)] // std's SipHasher is SipHash-2-4: a second implementation to check against.
    fn siphash_matches_std_for_every_length_and_key() {
        use std::hash::Hasher as _;
        let keys = [std::array::from_fn(|i| i as u8), KEY, [0xff; 16]];
        let msg: Vec<u8> = (0..80u8)
            .map(|i| i.wrapping_mul(151).wrapping_add(7))
            .collect();
        for key in keys {
            let word = |half: &[u8]| {
                let mut bytes = [0; 8];
                bytes.copy_from_slice(half);
                u64::from_le_bytes(bytes)
            };
            for len in 0..=msg.len() {
                let mut std = std::hash::SipHasher::new_with_keys(word(&key[..8]), word(&key[8..]));
                std.write(&msg[..len]);
                assert_eq!(siphash24(&key, &msg[..len]), std.finish(), "length {len}");
            }
        }
    }

    #[test]
    fn siphash_of_pieces_is_the_hash_of_their_concatenation() {
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..40).collect();
        for split in 0..=msg.len() {
            for second in split..=msg.len() {
                let mut h = Sip24::new(&key);
                h.write(&msg[..split]);
                h.write(&msg[split..second]);
                h.write(&msg[second..]);
                assert_eq!(
                    h.finish(),
                    siphash24(&key, &msg),
                    "split at {split}, {second}"
                );
            }
        }
    }

    #[test]
    fn golden_vectors_pin_the_placement() {
        let abc: Vec<String> = ["node-a", "node-b", "node-c"].map(String::from).to_vec();
        let cases = [
            ("127.0.0.1", ["node-a", "node-b", "node-c"]),
            ("127.0.0.2", ["node-b", "node-a", "node-c"]),
            ("127.0.0.3", ["node-c", "node-b", "node-a"]),
            ("10.0.0.1", ["node-c", "node-a", "node-b"]),
            ("192.168.1.20", ["node-b", "node-c", "node-a"]),
            ("2001:db8::1", ["node-c", "node-b", "node-a"]),
        ];
        for (ip, want) in cases {
            let got: Vec<&str> = rank(&v4(ip), &abc, |n| (n.as_str(), 1))
                .into_iter()
                .map(String::as_str)
                .collect();
            assert_eq!(got, want, "{ip}");
        }
        assert_eq!(hash(&v4("127.0.0.1"), "node-a"), 0xedc0_66fa_12c9_923a);
        assert_eq!(hash(&v4("2001:db8::1"), "node-a"), 0x0033_e76c_51ae_9570);
    }

    #[test]
    fn keys_mask_to_the_prefix_and_unmap_ipv4() {
        let k = ClientKey::new("10.1.2.3".parse().unwrap(), 24, 64);
        assert_eq!(k.to_string(), "10.1.2.0/24");
        let mapped = ClientKey::new("::ffff:10.1.2.3".parse().unwrap(), 24, 64);
        assert_eq!(mapped, k);
        let k6 = ClientKey::new("2001:db8:1:2:3:4:5:6".parse().unwrap(), 24, 48);
        assert_eq!(k6.to_string(), "2001:db8:1::/48");
        assert_eq!(
            ClientKey::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 32, 128).prefix(),
            128
        );
        assert_eq!(
            ClientKey::new("1.2.3.4".parse().unwrap(), 0, 0).to_string(),
            "0.0.0.0/0"
        );
    }

    #[test]
    fn clients_of_one_prefix_share_a_node() {
        let nodes = names(5);
        let a = ClientKey::new("10.9.8.1".parse().unwrap(), 24, 64);
        let b = ClientKey::new("10.9.8.200".parse().unwrap(), 24, 64);
        assert_eq!(first(&a, &nodes), first(&b, &nodes));
    }

    #[test]
    fn ranking_is_a_permutation_independent_of_list_order() {
        let nodes = names(6);
        let mut reversed = nodes.clone();
        reversed.reverse();
        for key in random_keys(7, 200) {
            let a = rank(&key, &nodes, |n| (n.as_str(), 1));
            let b = rank(&key, &reversed, |n| (n.as_str(), 1));
            assert_eq!(a, b);
            let mut sorted: Vec<&String> = a.clone();
            sorted.sort();
            assert_eq!(sorted, nodes.iter().collect::<Vec<_>>());
        }
    }

    const MAX_NODES: usize = 11;

    /// The scores of node-0..node-10 for every key, hashed once. The best of
    /// a subset is what `rank` puts first for that subset; the first 2000 keys
    /// are checked against `rank` itself.
    struct Table {
        keys: Vec<ClientKey>,
        scores: Vec<[f64; MAX_NODES]>,
    }

    impl Table {
        fn new(seed: u64) -> Self {
            let keys = random_keys(seed, 100_000);
            let all = names(MAX_NODES);
            let scores = keys
                .iter()
                .map(|k| std::array::from_fn(|i| score(k, &all[i], 1)))
                .collect();
            Table { keys, scores }
        }

        /// Index of the first choice among `members` for every key.
        fn firsts(&self, members: &[usize]) -> Vec<usize> {
            let firsts: Vec<usize> = self
                .scores
                .iter()
                .map(|row| {
                    *members
                        .iter()
                        .max_by(|a, b| row[**a].total_cmp(&row[**b]))
                        .unwrap()
                })
                .collect();
            let all = names(MAX_NODES);
            let nodes: Vec<String> = members.iter().map(|i| all[*i].clone()).collect();
            for (key, want) in self.keys.iter().zip(&firsts).take(2000) {
                assert_eq!(first(key, &nodes), all[*want], "table and rank disagree");
            }
            firsts
        }
    }

    #[test]
    fn equal_nodes_are_balanced_within_five_percent() {
        let table = Table::new(1);
        for n in 3..=10 {
            let members: Vec<usize> = (0..n).collect();
            let mut counts = vec![0usize; n];
            for i in table.firsts(&members) {
                counts[i] += 1;
            }
            assert!(counts.iter().all(|c| *c > 0));
            let max = *counts.iter().max().unwrap() as f64;
            let mean = table.keys.len() as f64 / n as f64;
            assert!(max / mean <= 1.05, "{n} nodes: max/mean = {}", max / mean);
        }
    }

    #[test]
    fn weights_set_the_share() {
        let nodes = [("light", 1), ("heavy", 3)];
        let keys = random_keys(2, 40_000);
        let heavy = keys
            .iter()
            .filter(|k| rank(k, &nodes, |n| (n.0, n.1))[0].0 == "heavy")
            .count() as f64;
        let share = heavy / keys.len() as f64;
        assert!((share - 0.75).abs() < 0.02, "heavy share {share}");
    }

    #[test]
    fn adding_a_node_moves_only_its_share_to_it() {
        let table = Table::new(3);
        for n in 3..=10 {
            let before = table.firsts(&(0..n).collect::<Vec<_>>());
            let after = table.firsts(&(0..=n).collect::<Vec<_>>());
            let mut moved = 0;
            for (old, new) in before.iter().zip(&after) {
                if old != new {
                    assert_eq!(*new, n, "a key moved between two old nodes");
                    moved += 1;
                }
            }
            let fraction = moved as f64 / table.keys.len() as f64;
            let expected = 1.0 / (n + 1) as f64;
            assert!(
                (fraction - expected).abs() <= 0.02,
                "{n}+1 nodes: moved {fraction}, expected {expected}"
            );
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let table = Table::new(4);
        for n in 3..=10 {
            let removed = n / 2;
            let before = table.firsts(&(0..n).collect::<Vec<_>>());
            let after = table.firsts(&(0..n).filter(|i| *i != removed).collect::<Vec<_>>());
            let mut moved = 0;
            for (old, new) in before.iter().zip(&after) {
                if old != new {
                    assert_eq!(*old, removed, "a key left a node that stayed");
                    moved += 1;
                }
            }
            let fraction = moved as f64 / table.keys.len() as f64;
            let expected = 1.0 / n as f64;
            assert!(
                (fraction - expected).abs() <= 0.02,
                "{n}-1 nodes: moved {fraction}, expected {expected}"
            );
        }
    }

    /// The ranking by exact scores alone, as it was before equal weights
    /// skipped the logarithm.
    fn rank_by_exact_scores<'a>(key: &ClientKey, nodes: &'a [(String, u32)]) -> Vec<&'a str> {
        let mut scored: Vec<(u64, &str)> = nodes
            .iter()
            .map(|(name, w)| (score(key, name, *w).to_bits(), name.as_str()))
            .collect();
        scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        scored.into_iter().map(|(_, name)| name).collect()
    }

    #[test]
    fn equal_weights_rank_as_the_exact_scores_do() {
        for (count, weights) in [
            (2, [1, 1]),
            (3, [7, 7]),
            (10, [1, 1]),
            (25, [u32::MAX; 2]),
            (10, [1, 2]),
        ] {
            let nodes: Vec<(String, u32)> = (0..count)
                .map(|i| (format!("node-{i}"), weights[i % 2]))
                .collect();
            for key in random_keys(count as u64, 5_000) {
                let got: Vec<&str> = rank(&key, &nodes, |(n, w)| (n.as_str(), *w))
                    .into_iter()
                    .map(|(n, _)| n.as_str())
                    .collect();
                assert_eq!(
                    got,
                    rank_by_exact_scores(&key, &nodes),
                    "{key}, {count} nodes"
                );
            }
        }
    }

    #[test]
    fn near_ties_in_hash_order_fall_back_to_the_exact_scores() {
        // Two neighbouring `u` whose scores round to the same float: the
        // name must decide, as it does for exact scores.
        let exact = |numerator: u64| score_of(numerator << 11, 1).to_bits();
        let low = (1u64 << 52..(1u64 << 52) + 100_000)
            .find(|&n| exact(n) == exact(n + 1))
            .expect("rounding ties exist near u = 0.5");
        let nodes = ["a", "b", "c"];
        let entry = |numerator: u64, i: usize| Scored {
            order: numerator << 11,
            item: &nodes[i],
        };
        fn name_weight<'n>(name: &'n &str) -> (&'n str, u32) {
            (name, 1)
        }
        let mut scored = [entry(low + 1, 1), entry(low, 0), entry(3, 2)];
        sort_by_score(&mut scored, &name_weight);
        let order: Vec<&str> = scored.iter().map(|s| *s.item).collect();
        assert_eq!(order, ["a", "b", "c"], "the tie goes to the smaller name");
        // Far apart, the hash order stands.
        let mut scored = [entry(low, 0), entry(low >> 1, 1)];
        sort_by_score(&mut scored, &name_weight);
        assert_eq!(scored.map(|s| *s.item), ["a", "b"]);
    }

    #[test]
    fn failover_order_is_the_ranking_without_the_dead_node() {
        let nodes = names(5);
        for key in random_keys(5, 1000) {
            let full = rank(&key, &nodes, |n| (n.as_str(), 1));
            let alive: Vec<String> = nodes.iter().filter(|n| *n != full[0]).cloned().collect();
            assert_eq!(first(&key, &alive), full[1].as_str());
        }
    }
}
