//! The pattern index: which subscribers' patterns match a topic.
//!
//! A trie over pattern segments. Literal segments are children keyed by their
//! text; `*` is one extra child per node; a trailing `#` is stored on the node
//! it follows. Matching a topic walks only the branches that can still match,
//! so a publish costs the matching paths and the subscribers reached, never a
//! scan over every subscription on the node.

use std::hash::Hash;
use std::sync::Arc;

use ahash::{AHashMap, AHashSet};
use stickyio_shared::topic::{Pattern, Segment, Topic};

/// Subscribers keyed by `K` (a socket id on a node), indexed by pattern.
#[derive(Debug)]
pub(crate) struct PatternIndex<K> {
    root: TrieNode<K>,
}

#[derive(Debug)]
struct TrieNode<K> {
    literal: AHashMap<Box<str>, TrieNode<K>>,
    one: Option<Box<TrieNode<K>>>,
    /// Patterns that end at this node.
    end: Option<Subscribers<K>>,
    /// Patterns that end with `#` right after this node.
    rest: Option<Subscribers<K>>,
}

/// Everyone holding one pattern, with the pattern text to report back.
#[derive(Debug)]
struct Subscribers<K> {
    pattern: Arc<str>,
    keys: AHashSet<K>,
}

impl<K> Default for TrieNode<K> {
    fn default() -> Self {
        TrieNode {
            literal: AHashMap::new(),
            one: None,
            end: None,
            rest: None,
        }
    }
}

impl<K> TrieNode<K> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.one.is_none() && self.end.is_none() && self.rest.is_none()
    }
}

impl<K: Copy + Eq + Hash> Default for PatternIndex<K> {
    fn default() -> Self {
        PatternIndex {
            root: TrieNode::default(),
        }
    }
}

impl<K: Copy + Eq + Hash> PatternIndex<K> {
    /// Adds `key` under `pattern`; false if it was already there.
    pub(crate) fn insert(&mut self, pattern: &Pattern, key: K) -> bool {
        let mut node = &mut self.root;
        for segment in pattern.segments() {
            node = match segment {
                Segment::Literal(text) => node.literal.entry(text.into()).or_default(),
                Segment::One => node.one.get_or_insert_with(Box::default),
                Segment::Rest => {
                    return subscribers(&mut node.rest, pattern).keys.insert(key);
                }
            };
        }
        subscribers(&mut node.end, pattern).keys.insert(key)
    }

    /// Removes `key` from `pattern`, pruning branches left empty; false if
    /// it was not there.
    pub(crate) fn remove(&mut self, pattern: &Pattern, key: K) -> bool {
        let segments: Vec<Segment<'_>> = pattern.segments().collect();
        remove_from(&mut self.root, &segments, key)
    }

    /// Every key with at least one pattern matching `topic`, each once, with
    /// all of its matching patterns (sorted, so deliveries are stable), in
    /// groups of keys that share one pattern list: a delivery is the same for
    /// every key of a group, so it is built once per group.
    pub(crate) fn matches(&self, topic: &Topic) -> Vec<Match<K>> {
        let segments: Vec<&str> = topic.segments().collect();
        let mut slots: Vec<&Subscribers<K>> = Vec::new();
        // Depth-first over (node, segments consumed). A path only continues
        // while it matches, so the walk is bounded by the patterns that match.
        let mut stack = vec![(&self.root, 0)];
        while let Some((node, depth)) = stack.pop() {
            let Some(segment) = segments.get(depth) else {
                slots.extend(&node.end);
                continue;
            };
            slots.extend(&node.rest);
            if let Some(child) = node.literal.get(*segment) {
                stack.push((child, depth + 1));
            }
            if let Some(child) = &node.one {
                stack.push((child, depth + 1));
            }
        }
        match slots.as_slice() {
            [] => Vec::new(),
            // The usual case (one pattern matches): no per-key bookkeeping.
            [only] => vec![Match {
                patterns: vec![only.pattern.clone()],
                keys: only.keys.iter().copied().collect(),
            }],
            _ => group_by_patterns(&slots),
        }
    }
}

/// Keys that share one list of matching patterns.
#[derive(Debug, PartialEq)]
pub(crate) struct Match<K> {
    pub patterns: Vec<Arc<str>>,
    pub keys: Vec<K>,
}

/// Several patterns matched: each key's own sorted list, then keys grouped
/// by that list.
fn group_by_patterns<K: Copy + Eq + Hash>(slots: &[&Subscribers<K>]) -> Vec<Match<K>> {
    let mut per_key: AHashMap<K, Vec<Arc<str>>> = AHashMap::new();
    for slot in slots {
        for key in &slot.keys {
            per_key.entry(*key).or_default().push(slot.pattern.clone());
        }
    }
    let mut groups: AHashMap<Vec<Arc<str>>, Vec<K>> = AHashMap::new();
    for (key, mut patterns) in per_key {
        patterns.sort_unstable();
        groups.entry(patterns).or_default().push(key);
    }
    groups
        .into_iter()
        .map(|(patterns, keys)| Match { patterns, keys })
        .collect()
}

fn subscribers<'a, K>(
    slot: &'a mut Option<Subscribers<K>>,
    pattern: &Pattern,
) -> &'a mut Subscribers<K> {
    slot.get_or_insert_with(|| Subscribers {
        pattern: pattern.shared().clone(),
        keys: AHashSet::new(),
    })
}

/// Removes `key` from the subscribers of `slot`, emptying the slot when it
/// was the last one.
fn remove_key<K: Eq + Hash>(slot: &mut Option<Subscribers<K>>, key: K) -> bool {
    let Some(subscribers) = slot else {
        return false;
    };
    let removed = subscribers.keys.remove(&key);
    if subscribers.keys.is_empty() {
        *slot = None;
    }
    removed
}

fn remove_from<K: Eq + Hash>(node: &mut TrieNode<K>, segments: &[Segment<'_>], key: K) -> bool {
    let Some((first, rest)) = segments.split_first() else {
        return remove_key(&mut node.end, key);
    };
    match first {
        Segment::Rest => remove_key(&mut node.rest, key),
        Segment::Literal(text) => {
            let Some(child) = node.literal.get_mut(*text) else {
                return false;
            };
            let removed = remove_from(child, rest, key);
            if child.is_empty() {
                node.literal.remove(*text);
            }
            removed
        }
        Segment::One => {
            let Some(child) = node.one.as_deref_mut() else {
                return false;
            };
            let removed = remove_from(child, rest, key);
            if child.is_empty() {
                node.one = None;
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    fn matched(index: &PatternIndex<u32>, topic: &str) -> Vec<(u32, Vec<String>)> {
        let mut out: Vec<_> = index
            .matches(&Topic::parse(topic).unwrap())
            .into_iter()
            .flat_map(|m| {
                let patterns: Vec<String> = m.patterns.iter().map(|p| p.to_string()).collect();
                m.keys.into_iter().map(move |k| (k, patterns.clone()))
            })
            .collect();
        out.sort();
        out
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn literal_star_and_rest_patterns_match_like_pattern_matches() {
        let patterns = [
            "news.eu",
            "news.*",
            "news.#",
            "*.eu",
            "#",
            "*.*.*",
            "sport.#",
            "news.eu.fr",
        ];
        let mut index = PatternIndex::default();
        for (i, pattern) in patterns.iter().enumerate() {
            assert!(index.insert(&p(pattern), i as u32));
        }
        for topic in [
            "news",
            "news.eu",
            "news.eu.fr",
            "sport.eu",
            "x.y.z",
            "a.b.c.d",
        ] {
            let t = Topic::parse(topic).unwrap();
            let expected: Vec<(u32, Vec<String>)> = patterns
                .iter()
                .enumerate()
                .filter(|(_, pattern)| p(pattern).matches(&t))
                .map(|(i, pattern)| (i as u32, vec![pattern.to_string()]))
                .collect();
            assert_eq!(matched(&index, topic), expected, "topic {topic}");
        }
    }

    #[test]
    fn a_key_with_several_matching_patterns_is_reported_once_with_all_of_them() {
        let mut index = PatternIndex::default();
        for pattern in ["news.*", "news.#", "news.eu", "sport.*"] {
            index.insert(&p(pattern), 7);
        }
        index.insert(&p("news.eu"), 8);
        assert_eq!(
            matched(&index, "news.eu"),
            vec![
                (7, strings(&["news.#", "news.*", "news.eu"])),
                (8, strings(&["news.eu"]))
            ]
        );
        assert_eq!(
            matched(&index, "news.eu.fr"),
            vec![(7, strings(&["news.#"]))]
        );
    }

    #[test]
    fn keys_with_the_same_matching_patterns_share_one_group() {
        let mut index = PatternIndex::default();
        for key in [1, 2, 3] {
            index.insert(&p("news.*"), key);
        }
        for key in [2, 3, 4] {
            index.insert(&p("news.eu"), key);
        }
        let mut groups: Vec<(Vec<String>, Vec<u32>)> = index
            .matches(&Topic::parse("news.eu").unwrap())
            .into_iter()
            .map(|mut m| {
                m.keys.sort_unstable();
                (m.patterns.iter().map(|p| p.to_string()).collect(), m.keys)
            })
            .collect();
        groups.sort();
        assert_eq!(
            groups,
            vec![
                (strings(&["news.*"]), vec![1]),
                (strings(&["news.*", "news.eu"]), vec![2, 3]),
                (strings(&["news.eu"]), vec![4]),
            ]
        );
    }

    #[test]
    fn suffixes_and_prefixes_do_not_match() {
        let mut index = PatternIndex::default();
        index.insert(&p("a.b"), 1);
        assert!(matched(&index, "x.a.b").is_empty());
        assert!(matched(&index, "a.b.c").is_empty());
        assert!(matched(&index, "a").is_empty());
        assert_eq!(matched(&index, "a.b"), vec![(1, strings(&["a.b"]))]);
    }

    #[test]
    fn insert_is_idempotent_and_remove_reports_presence() {
        let mut index = PatternIndex::default();
        assert!(index.insert(&p("a.*"), 1));
        assert!(!index.insert(&p("a.*"), 1));
        assert!(index.insert(&p("a.*"), 2));
        assert!(index.remove(&p("a.*"), 1));
        assert!(!index.remove(&p("a.*"), 1));
        assert!(
            !index.remove(&p("a.b"), 2),
            "a different pattern is not removed"
        );
        assert_eq!(matched(&index, "a.x"), vec![(2, strings(&["a.*"]))]);
    }

    #[test]
    fn removing_everything_prunes_the_trie() {
        let patterns = ["a.b.c", "a.*.c", "a.#", "#", "*", "a.b"];
        let mut index = PatternIndex::default();
        for pattern in patterns {
            index.insert(&p(pattern), 1);
            index.insert(&p(pattern), 2);
        }
        for pattern in patterns {
            assert!(index.remove(&p(pattern), 1));
        }
        assert!(!index.root.is_empty());
        for pattern in patterns {
            assert!(index.remove(&p(pattern), 2));
        }
        assert!(index.root.is_empty());
        assert!(matched(&index, "a.b.c").is_empty());
    }
}
