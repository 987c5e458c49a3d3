//! redact: masks e-mail addresses (`[email]`) and API-key-like strings
//! (`[api-key]`) in the output. Neither contains whitespace, so the last
//! word of a chunk is held back until the next whitespace settles it: a
//! secret split across chunks is masked whole and never leaks in part.

#![forbid(unsafe_code)]

use kiln_sdk::post_process::{ChunkAction, Emitted, FinishReason, Options, PostProcess};

/// Prefixes of well-known secret formats (OpenAI, Stripe, GitHub, Slack, AWS).
const KEY_PREFIXES: &[&str] =
    &["sk-", "sk_live_", "sk_test_", "pk_live_", "ghp_", "gho_", "github_pat_", "xoxb-", "xoxp-", "AKIA"];
/// A prefixed key needs at least this many key characters after its prefix.
const MIN_PREFIXED: usize = 16;
/// An unprefixed run of key characters this long, with letters and digits, looks like a key.
const MIN_BARE: usize = 32;

#[derive(Debug, Default)]
pub struct Redact {
    /// The last, possibly unfinished, word.
    held: String,
}

impl PostProcess for Redact {
    fn new(_: &Options) -> Result<Self, String> {
        Ok(Redact::default())
    }

    fn on_chunk(&mut self, text: &str) -> ChunkAction {
        self.held.push_str(text);
        let cut = self
            .held
            .rfind(char::is_whitespace)
            .map_or(0, |i| i + self.held[i..].chars().next().map_or(0, char::len_utf8));
        let ready: String = self.held.drain(..cut).collect();
        ChunkAction::emit(redact(&ready))
    }

    fn finish(&mut self, _: FinishReason) -> Emitted {
        redact(&std::mem::take(&mut self.held)).into()
    }
}

/// Masks every e-mail address and key-like string in `text`, word by word.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word_start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), word_start) {
            (true, Some(start)) => {
                out.push_str(&redact_word(&text[start..i]));
                out.push(c);
                word_start = None;
            }
            (true, None) => out.push(c),
            (false, None) => word_start = Some(i),
            (false, Some(_)) => {}
        }
    }
    if let Some(start) = word_start {
        out.push_str(&redact_word(&text[start..]));
    }
    out
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-".contains(c)
}

fn is_domain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-'
}

/// One whitespace-free word with its secrets masked.
fn redact_word(word: &str) -> String {
    let word = mask_emails(word);
    mask_keys(&word)
}

fn mask_emails(word: &str) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(at) = rest.find('@') {
        let local_start = rest[..at].rfind(|c: char| !is_local_char(c)).map_or(0, |i| i + 1);
        let domain_len = rest[at + 1..].find(|c: char| !is_domain_char(c)).unwrap_or(rest.len() - at - 1);
        // A sentence's full stop after the address is not part of it.
        let domain = rest[at + 1..at + 1 + domain_len].trim_end_matches(['.', '-']);
        let tld_ok = domain.rsplit_once('.').is_some_and(|(host, tld)| {
            !host.is_empty() && tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())
        });
        if local_start < at && tld_ok {
            out.push_str(&rest[..local_start]);
            out.push_str("[email]");
            rest = &rest[at + 1 + domain.len()..];
        } else {
            out.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

fn mask_keys(word: &str) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(start) = rest.find(is_key_char) {
        out.push_str(&rest[..start]);
        let run_len = rest[start..].find(|c: char| !is_key_char(c)).unwrap_or(rest.len() - start);
        let run = &rest[start..start + run_len];
        out.push_str(if looks_like_key(run) { "[api-key]" } else { run });
        rest = &rest[start + run_len..];
    }
    out.push_str(rest);
    out
}

fn looks_like_key(run: &str) -> bool {
    let prefixed = KEY_PREFIXES.iter().any(|p| run.strip_prefix(p).is_some_and(|tail| tail.len() >= MIN_PREFIXED));
    let bare = run.len() >= MIN_BARE
        && run.chars().any(|c| c.is_ascii_digit())
        && run.chars().any(|c| c.is_ascii_alphabetic());
    prefixed || bare
}

kiln_sdk::export_post_process!(Redact);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_sdk::testing::run_post_process;

    fn stream(chunks: &[&str]) -> String {
        let mut p = Redact::new(&Options::default()).unwrap();
        run_post_process(&mut p, chunks, FinishReason::Stop).0
    }

    #[test]
    fn emails_and_keys_are_masked() {
        assert_eq!(redact("mail jane.doe+x@example.co.uk now."), "mail [email] now.");
        assert_eq!(redact("(bob@mail.example.com)."), "([email]).");
        assert_eq!(redact("key: sk-abcdefghijklmnop1234 ok"), "key: [api-key] ok");
        assert_eq!(redact("AKIAABCDEFGHIJKLMNOP"), "[api-key]");
        assert_eq!(redact("token=a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8"), "token=[api-key]");
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        let text = "Meet @ noon, e.g. at 10.30; the sk- prefix and user@host are fine. internationalization";
        assert_eq!(redact(text), text);
    }

    #[test]
    fn a_secret_split_across_chunks_is_masked_whole() {
        assert_eq!(stream(&["write to jane", ".doe@exa", "mple.com ", "today"]), "write to [email] today");
        assert_eq!(stream(&["the key is sk-abc", "defghijklmn", "opqrstu", "vw\nbye"]), "the key is [api-key]\nbye");
    }

    #[test]
    fn held_text_is_released_at_the_end() {
        assert_eq!(stream(&["ends with a word"]), "ends with a word");
        assert_eq!(stream(&["ends with ", "x@y.io"]), "ends with [email]");
    }
}
