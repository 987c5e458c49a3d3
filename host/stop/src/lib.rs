//! kiln-stop: stop strings over streamed text. Text that could still become
//! a stop string is held back, so a match split across chunks never leaks.
//! The host applies a request's `stop` with it, and the `stop-sequences`
//! plugin is built on it: one implementation of the rule.

#![forbid(unsafe_code)]

/// Most stop strings per request, and longest one in bytes.
pub const MAX_STOP_STRINGS: usize = 16;
pub const MAX_STOP_BYTES: usize = 256;

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released: a suffix that may begin a stop string.
    held: String,
}

/// What one [`StopMatcher::push`] releases.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    /// Text safe to send on.
    pub text: String,
    /// A stop string was found; `text` ends right before it and generation must end.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher { stops, held: String::new() }
    }

    pub fn push(&mut self, chunk: &str) -> Released {
        if self.stops.is_empty() {
            return Released { text: chunk.to_string(), stopped: false };
        }
        self.held.push_str(chunk);
        // The earliest occurrence of any stop string ends the text.
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first {
            self.held.truncate(at);
            return Released { text: std::mem::take(&mut self.held), stopped: true };
        }
        let keep = self.partial_suffix_len();
        let text = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        Released { text, stopped: false }
    }

    /// The end of the stream: whatever was held is ordinary text after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of a stop string.
    fn partial_suffix_len(&self) -> usize {
        let held = self.held.as_str();
        let longest = self.stops.iter().map(|s| s.len() - 1).max().unwrap_or(0).min(held.len());
        (1..=longest)
            .rev()
            .filter(|n| held.is_char_boundary(held.len() - n))
            .find(|n| self.stops.iter().any(|s| s.starts_with(&held[held.len() - n..])))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for c in chunks {
            let r = m.push(c);
            out.push_str(&r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_string_split_across_chunks_never_leaks() {
        assert_eq!(run(&["END"], &["hello E", "N", "D tail"]), ("hello ".into(), true));
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abc E").text, "abc ");
        assert_eq!(m.push("N").text, "");
        assert_eq!(m.push("x").text, "ENx");
    }

    #[test]
    fn held_text_is_released_at_the_end() {
        assert_eq!(run(&["END"], &["the E", "N"]), ("the EN".into(), false));
    }

    #[test]
    fn earliest_of_several_stop_strings_wins() {
        assert_eq!(run(&["world", "lo"], &["hello world"]), ("hel".into(), true));
        assert_eq!(run(&["\n\n", "###"], &["a\n", "\nb"]), ("a".into(), true));
    }

    #[test]
    fn no_stop_strings_passes_text_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn multibyte_text_is_split_on_character_boundaries() {
        assert_eq!(run(&["é!"], &["caf", "é", "é", "!"]), ("caf\u{e9}".into(), true));
        assert_eq!(run(&["日本"], &["今日", "は日", "x"]), ("今日は日x".into(), false));
    }
}
