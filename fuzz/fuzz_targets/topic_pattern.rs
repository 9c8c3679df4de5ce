//! Topic names and subscription patterns come from every client. Parsing must
//! not panic, errors must stay short (an error never echoes a huge input),
//! and what parses must behave: a topic is a pattern matching itself, `#`
//! matches any topic that starts with the pattern's other segments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stickyio_shared::topic::{MAX_BYTES, Pattern, Topic};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (left, right) = text.split_once('\n').unwrap_or((text, text));
    let topic = Topic::parse(left);
    let pattern = Pattern::parse(right);
    for err in [topic.as_ref().err(), pattern.as_ref().err()]
        .into_iter()
        .flatten()
    {
        assert!(err.to_string().len() < MAX_BYTES + 400, "{err}");
    }
    if let Ok(topic) = &topic {
        let itself = Pattern::parse(topic.as_str()).expect("a topic is a valid pattern");
        assert!(itself.matches(topic));
        if let Ok(pattern) = &pattern {
            let _ = pattern.matches(topic);
        }
        let first = topic.segments().next().unwrap_or_default();
        if topic.segments().count() > 1 {
            if let Ok(rest) = Pattern::parse(&format!("{first}.#")) {
                assert!(rest.matches(topic), "{rest} vs {topic}");
            }
        }
    }
});
