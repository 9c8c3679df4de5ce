//! Topics and subscription patterns: parsing, validation and matching.
//!
//! A topic is a concrete, dot-separated name such as `chat.room1.typing`. A
//! pattern may also use two wildcards, each standing for a whole segment:
//! `*` matches exactly one segment, `#` matches one or more segments and may
//! only be the last one. Matching is anchored at both ends, so `a.b` matches
//! neither `x.a.b` nor `a.b.c`.
//!
//! Every node, the mesh and the tests validate names here so a client sees the
//! same error, worded the same way, whichever node it reached. Rules:
//!
//! - not empty, at most [`MAX_BYTES`] bytes and [`MAX_SEGMENTS`] segments;
//! - no empty segment (`a..b`, a leading or trailing dot);
//! - no control characters and no whitespace: names end up in logs, metrics
//!   and URLs, where invisible or blank characters only cause confusion;
//! - a topic has no wildcard characters at all; in a pattern a wildcard is a
//!   whole segment (`a*` is refused) and `#` is only allowed last.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest topic or pattern accepted, in bytes of UTF-8.
pub const MAX_BYTES: usize = 256;
/// Most segments a topic or pattern may have.
pub const MAX_SEGMENTS: usize = 32;

/// The segment wildcard: exactly one segment.
const ONE: &str = "*";
/// The tail wildcard: one or more segments, last position only.
const REST: &str = "#";

/// Whether a name was parsed as a topic or as a pattern; named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Topic,
    Pattern,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Topic => "topic",
            Kind::Pattern => "pattern",
        })
    }
}

/// Why a topic or pattern was refused. Segments are numbered from 1, and the
/// offending name is quoted (shortened when very long) so a client can see
/// what it sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("{kind} is empty")]
    Empty { kind: Kind },
    #[error("{kind} {name:?} is {len} bytes long; the limit is {MAX_BYTES}")]
    TooLong {
        kind: Kind,
        name: String,
        len: usize,
    },
    #[error("{kind} {name:?} has {count} segments; the limit is {MAX_SEGMENTS}")]
    TooManySegments {
        kind: Kind,
        name: String,
        count: usize,
    },
    #[error("segment {segment} of {kind} {name:?} is empty")]
    EmptySegment {
        kind: Kind,
        name: String,
        segment: usize,
    },
    #[error("segment {segment} of {kind} {name:?} contains the control character {found:?}")]
    ControlCharacter {
        kind: Kind,
        name: String,
        segment: usize,
        found: char,
    },
    #[error("segment {segment} of {kind} {name:?} contains whitespace {found:?}")]
    Whitespace {
        kind: Kind,
        name: String,
        segment: usize,
        found: char,
    },
    #[error(
        "segment {segment} of topic {name:?} contains the wildcard {found:?}; \
         a published topic must be concrete (wildcards belong in subscription patterns)"
    )]
    WildcardInTopic {
        name: String,
        segment: usize,
        found: char,
    },
    #[error(
        "segment {segment} of pattern {name:?} mixes the wildcard {found:?} with other characters; \
         a wildcard must be a whole segment"
    )]
    MixedWildcard {
        name: String,
        segment: usize,
        found: char,
    },
    #[error(
        "segment {segment} of pattern {name:?} is `#`, which is only allowed as the last segment"
    )]
    RestNotLast { name: String, segment: usize },
}

/// `parse`, `as_str`, `FromStr` and `Display` for a name checked as `$kind`.
macro_rules! validated_name {
    ($name:ident, $kind:expr) => {
        impl $name {
            pub fn parse(name: &str) -> Result<$name, TopicError> {
                check(name, $kind)?;
                Ok($name(Arc::from(name)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = TopicError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// A concrete topic, validated: what a message is published on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic(Arc<str>);

validated_name!(Topic, Kind::Topic);

impl Topic {
    pub fn segments(&self) -> impl Iterator<Item = &str> + Clone {
        self.0.split('.')
    }
}

/// One segment of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Matches this exact segment.
    Literal(&'a str),
    /// `*`: matches exactly one segment.
    One,
    /// `#`: matches one or more segments; always the last segment.
    Rest,
}

/// A validated subscription pattern such as `news.*` or `chat.#`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern(Arc<str>);

validated_name!(Pattern, Kind::Pattern);

impl Pattern {
    /// The text shared, so indexes and deliveries can hold it cheaply.
    pub fn shared(&self) -> &Arc<str> {
        &self.0
    }

    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> + Clone {
        self.0.split('.').map(|s| match s {
            ONE => Segment::One,
            REST => Segment::Rest,
            literal => Segment::Literal(literal),
        })
    }

    /// Whether `topic` is matched, anchored at both ends.
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut topic = topic.segments();
        for segment in self.segments() {
            match (segment, topic.next()) {
                (_, None) => return false,
                (Segment::Rest, Some(_)) => return true,
                (Segment::One, Some(_)) => {}
                (Segment::Literal(want), Some(got)) if want == got => {}
                (Segment::Literal(_), Some(_)) => return false,
            }
        }
        topic.next().is_none()
    }
}

/// How much of an over-long name is quoted back in an error.
const QUOTED_CHARS: usize = 48;

/// The name as quoted in errors: cut short so an error never echoes a huge input.
fn quoted(name: &str) -> String {
    match name.char_indices().nth(QUOTED_CHARS) {
        Some((end, _)) => format!("{}…", &name[..end]),
        None => name.to_owned(),
    }
}

fn check(name: &str, kind: Kind) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty { kind });
    }
    if name.len() > MAX_BYTES {
        return Err(TopicError::TooLong {
            kind,
            name: quoted(name),
            len: name.len(),
        });
    }
    let count = name.split('.').count();
    if count > MAX_SEGMENTS {
        return Err(TopicError::TooManySegments {
            kind,
            name: quoted(name),
            count,
        });
    }
    for (i, segment) in name.split('.').enumerate() {
        check_segment(name, kind, i + 1, segment, i + 1 == count)?;
    }
    Ok(())
}

fn check_segment(
    name: &str,
    kind: Kind,
    index: usize,
    segment: &str,
    last: bool,
) -> Result<(), TopicError> {
    let name = || quoted(name);
    if segment.is_empty() {
        return Err(TopicError::EmptySegment {
            kind,
            name: name(),
            segment: index,
        });
    }
    for c in segment.chars() {
        if c.is_control() {
            return Err(TopicError::ControlCharacter {
                kind,
                name: name(),
                segment: index,
                found: c,
            });
        }
        if c.is_whitespace() {
            return Err(TopicError::Whitespace {
                kind,
                name: name(),
                segment: index,
                found: c,
            });
        }
    }
    let Some(found) = segment.chars().find(|&c| c == '*' || c == '#') else {
        return Ok(());
    };
    match kind {
        Kind::Topic => Err(TopicError::WildcardInTopic {
            name: name(),
            segment: index,
            found,
        }),
        Kind::Pattern if segment.len() > 1 => Err(TopicError::MixedWildcard {
            name: name(),
            segment: index,
            found,
        }),
        Kind::Pattern if segment == REST && !last => Err(TopicError::RestNotLast {
            name: name(),
            segment: index,
        }),
        Kind::Pattern => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn pattern(s: &str) -> Pattern {
        Pattern::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn matches(p: &str, t: &str) -> bool {
        pattern(p).matches(&topic(t))
    }

    #[test]
    fn literal_patterns_match_only_the_same_topic() {
        assert!(matches("a", "a"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.c"));
        assert!(!matches("a", "b"));
    }

    #[test]
    fn matching_is_anchored_at_both_ends() {
        assert!(!matches("a.b", "x.a.b"), "suffix must not match");
        assert!(!matches("a.b", "a.b.c"), "prefix must not match");
        assert!(!matches("a.b", "a"));
        assert!(!matches("b", "a.b"));
        assert!(!matches("*.b", "x.a.b"));
        assert!(!matches("a.#", "x.a.b"));
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        assert!(matches("news.*", "news.eu"));
        assert!(!matches("news.*", "news.eu.fr"));
        assert!(!matches("news.*", "news"));
        assert!(matches("*", "anything"));
        assert!(!matches("*", "two.segments"));
        assert!(matches("*.eu.*", "news.eu.fr"));
        assert!(!matches("*.eu.*", "news.us.fr"));
        assert!(matches("*.*", "a.b"));
    }

    #[test]
    fn hash_matches_one_or_more_trailing_segments() {
        assert!(matches("news.#", "news.eu"));
        assert!(matches("news.#", "news.eu.fr"));
        assert!(matches("news.#", "news.eu.fr.paris"));
        assert!(!matches("news.#", "news"), "# needs at least one segment");
        assert!(!matches("news.#", "sport.eu"));
        assert!(matches("#", "a"));
        assert!(matches("#", "a.b.c"));
        assert!(matches("*.#", "a.b"));
        assert!(!matches("*.#", "a"));
    }

    #[test]
    fn segments_are_exposed_for_indexing() {
        let p = pattern("a.*.#");
        let segments: Vec<_> = p.segments().collect();
        assert_eq!(
            segments,
            [Segment::Literal("a"), Segment::One, Segment::Rest]
        );
        assert_eq!(topic("x.y").segments().collect::<Vec<_>>(), ["x", "y"]);
    }

    #[test]
    fn empty_names_are_refused() {
        assert_eq!(Topic::parse("").unwrap_err().to_string(), "topic is empty");
        assert_eq!(
            Pattern::parse("").unwrap_err().to_string(),
            "pattern is empty"
        );
    }

    #[test]
    fn empty_segments_are_refused_with_their_position() {
        assert_eq!(
            Topic::parse("a..b").unwrap_err().to_string(),
            r#"segment 2 of topic "a..b" is empty"#
        );
        assert_eq!(
            Topic::parse(".a").unwrap_err().to_string(),
            r#"segment 1 of topic ".a" is empty"#
        );
        assert_eq!(
            Pattern::parse("a.").unwrap_err().to_string(),
            r#"segment 2 of pattern "a." is empty"#
        );
        assert_eq!(
            Pattern::parse(".").unwrap_err().to_string(),
            r#"segment 1 of pattern "." is empty"#
        );
    }

    #[test]
    fn control_characters_are_refused() {
        let err = Topic::parse("a.b\u{7}c").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"segment 2 of topic "a.b\u{7}c" contains the control character '\u{7}'"#
        );
        assert!(matches!(
            Pattern::parse("a\n").unwrap_err(),
            TopicError::ControlCharacter { segment: 1, .. }
        ));
        assert!(Topic::parse("a\u{0}").is_err());
        assert!(Topic::parse("a\u{85}").is_err(), "C1 controls too");
    }

    #[test]
    fn whitespace_is_refused() {
        assert_eq!(
            Topic::parse("chat.room 1").unwrap_err().to_string(),
            r#"segment 2 of topic "chat.room 1" contains whitespace ' '"#
        );
        assert!(matches!(
            Pattern::parse("a.\u{a0}").unwrap_err(),
            TopicError::Whitespace { segment: 2, .. }
        ));
    }

    #[test]
    fn unicode_and_punctuation_are_allowed() {
        assert!(matches("café.*", "café.crème"));
        assert!(matches("a-b_c:d/e", "a-b_c:d/e"));
    }

    #[test]
    fn length_limit_is_in_bytes_and_inclusive() {
        let at_limit = "a".repeat(MAX_BYTES);
        assert!(Topic::parse(&at_limit).is_ok());
        let over = "a".repeat(MAX_BYTES + 1);
        let err = Topic::parse(&over).unwrap_err().to_string();
        assert!(
            err.ends_with(&format!(
                "is {} bytes long; the limit is {MAX_BYTES}",
                MAX_BYTES + 1
            )),
            "{err}"
        );
        assert!(
            err.contains('…'),
            "long names are shortened in errors: {err}"
        );
        assert!(err.len() < 200, "{err}");
        let multibyte = "é".repeat(MAX_BYTES / 2 + 1);
        assert!(matches!(
            Pattern::parse(&multibyte).unwrap_err(),
            TopicError::TooLong {
                kind: Kind::Pattern,
                ..
            }
        ));
    }

    #[test]
    fn segment_count_is_limited() {
        let at_limit = vec!["a"; MAX_SEGMENTS].join(".");
        assert!(Topic::parse(&at_limit).is_ok());
        let over = vec!["a"; MAX_SEGMENTS + 1].join(".");
        assert_eq!(
            Pattern::parse(&over).unwrap_err(),
            TopicError::TooManySegments {
                kind: Kind::Pattern,
                name: quoted(&over),
                count: MAX_SEGMENTS + 1
            }
        );
        assert!(
            Pattern::parse(&over)
                .unwrap_err()
                .to_string()
                .ends_with("has 33 segments; the limit is 32")
        );
    }

    #[test]
    fn topics_refuse_wildcards() {
        assert_eq!(
            Topic::parse("news.*").unwrap_err().to_string(),
            r#"segment 2 of topic "news.*" contains the wildcard '*'; a published topic must be concrete (wildcards belong in subscription patterns)"#
        );
        assert!(matches!(
            Topic::parse("#").unwrap_err(),
            TopicError::WildcardInTopic {
                segment: 1,
                found: '#',
                ..
            }
        ));
        assert!(matches!(
            Topic::parse("a.b*c").unwrap_err(),
            TopicError::WildcardInTopic {
                segment: 2,
                found: '*',
                ..
            }
        ));
    }

    #[test]
    fn wildcards_must_be_whole_segments() {
        assert_eq!(
            Pattern::parse("a*").unwrap_err().to_string(),
            r#"segment 1 of pattern "a*" mixes the wildcard '*' with other characters; a wildcard must be a whole segment"#
        );
        assert!(matches!(
            Pattern::parse("a.#b").unwrap_err(),
            TopicError::MixedWildcard {
                segment: 2,
                found: '#',
                ..
            }
        ));
        assert!(matches!(
            Pattern::parse("**").unwrap_err(),
            TopicError::MixedWildcard { segment: 1, .. }
        ));
    }

    #[test]
    fn hash_is_only_allowed_last() {
        assert_eq!(
            Pattern::parse("a.#.b").unwrap_err().to_string(),
            r#"segment 2 of pattern "a.#.b" is `#`, which is only allowed as the last segment"#
        );
        assert!(Pattern::parse("#.#").is_err());
        assert!(Pattern::parse("a.*.#").is_ok());
        assert!(Pattern::parse("*.*.*").is_ok());
    }

    #[test]
    fn from_str_and_display_round_trip() {
        let p: Pattern = "news.*".parse().unwrap();
        assert_eq!(p.to_string(), "news.*");
        assert_eq!(p.shared().as_ref(), "news.*");
        let t: Topic = "news.eu".parse().unwrap();
        assert_eq!(t.to_string(), "news.eu");
        assert_eq!(t.as_str(), "news.eu");
        assert!("a..b".parse::<Topic>().is_err());
    }
}
