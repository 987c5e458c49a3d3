use std::borrow::Borrow;

use crate::Tokenizer;

/// Streams text from token ids without ever emitting a broken UTF-8 character.
///
/// Byte-level BPE often splits one character across tokens (emoji and CJK regularly are), so
/// an incomplete multi-byte tail is held back until a later token completes it. Bytes that can
/// never become valid are emitted as U+FFFD straight away, exactly as a whole-sequence lossy
/// decode would, so the concatenation of every [`push`](Self::push) plus
/// [`finish`](Self::finish) equals [`Tokenizer::decode`] of the same ids.
///
/// `T` is whatever owns or borrows the tokenizer: `&Tokenizer`, `Arc<Tokenizer>`, ...
#[derive(Debug)]
pub struct IncrementalDecoder<T: Borrow<Tokenizer>> {
    tokenizer: T,
    skip_special: bool,
    /// Bytes not yet emitted; at most an incomplete character (3 bytes) between pushes.
    pending: Vec<u8>,
}

impl<T: Borrow<Tokenizer>> IncrementalDecoder<T> {
    pub fn new(tokenizer: T, skip_special: bool) -> Self {
        Self { tokenizer, skip_special, pending: Vec::with_capacity(16) }
    }

    /// Feed one generated id; returns the text it completed (possibly empty). Ids outside the
    /// vocabulary contribute nothing, since a stream has no way to report them mid-flight.
    pub fn push(&mut self, id: u32) -> String {
        let tok = self.tokenizer.borrow();
        if self.skip_special && tok.is_special(id) {
            return String::new();
        }
        self.pending.extend_from_slice(tok.token_bytes(id));
        self.drain(false)
    }

    /// Flush whatever is held back, lossily: a tail that never completed becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        self.drain(true)
    }

    fn drain(&mut self, at_end: bool) -> String {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // valid_up_to guarantees this prefix is UTF-8.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // Invalid no matter what follows: replace it now, like from_utf8_lossy.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        // A truncated character at the very end: later bytes may complete it.
                        None if !at_end => {
                            rest = after;
                            break;
                        }
                        None => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &[];
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let len = self.pending.len();
        self.pending.drain(..len - keep);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::tests::{content, tok};

    #[test]
    fn incremental_matches_full_decode_without_replacement_chars() {
        let t = Arc::new(Tokenizer::from_gguf(&content()).unwrap());
        let text = "你好世界 😀🎉👨‍👩‍👧 日本語 ✨ naïve 🇫🇷 한국어";
        let ids = t.encode(text, false).unwrap();
        let mut dec = IncrementalDecoder::new(Arc::clone(&t), false);
        let mut streamed = String::new();
        for &i in &ids {
            let piece = dec.push(i);
            assert!(!piece.contains('\u{FFFD}'), "partial character leaked at id {i}: {piece:?}");
            streamed.push_str(&piece);
        }
        streamed.push_str(&dec.finish());
        assert_eq!(streamed, t.decode(&ids, false).unwrap());
        assert_eq!(streamed, text);
    }

    #[test]
    fn incremental_holds_back_split_character() {
        // llama.cpp splits " 😀" into "ĠðŁĺ" (space + first three bytes) and "Ģ" (the last byte).
        let ids = tok().encode(" 😀", false).unwrap();
        assert_eq!(ids, [40303, 218]);
        let mut dec = IncrementalDecoder::new(tok(), false);
        assert_eq!(dec.push(40303), " ");
        assert_eq!(dec.push(218), "😀");
        assert_eq!(dec.finish(), "");

        // A character that never completes is flushed as one replacement character.
        let mut dec = IncrementalDecoder::new(tok(), false);
        assert_eq!(dec.push(40303), " ");
        assert_eq!(dec.finish(), "\u{FFFD}");
    }

    #[test]
    fn incremental_invalid_bytes_are_not_held() {
        // A lone continuation byte can never become valid, so waiting would only delay output.
        let mut dec = IncrementalDecoder::new(tok(), false);
        assert_eq!(dec.push(218), "\u{FFFD}");
        assert_eq!(dec.push(19556), "Hello");
        // An incomplete lead sequence interrupted by ASCII: replaced, then the ASCII follows.
        assert_eq!(dec.push(40303), " ");
        assert_eq!(dec.push(19556), "\u{FFFD}Hello");
        assert_eq!(dec.finish(), "");
    }

    #[test]
    fn incremental_skip_special() {
        let ids = tok().encode("<|im_start|>assistant\nHi there<|im_end|>", true).unwrap();
        for skip in [false, true] {
            let mut dec = IncrementalDecoder::new(tok(), skip);
            let mut s: String = ids.iter().map(|&i| dec.push(i)).collect();
            s.push_str(&dec.finish());
            assert_eq!(s, tok().decode(&ids, skip).unwrap());
        }
    }

    #[test]
    fn incremental_equals_lossy_decode_on_arbitrary_ids() {
        // Random ids produce plenty of broken byte sequences; the stream must still match
        // a whole-sequence lossy decode exactly.
        let n = tok().vocab_size() as u64;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut ids = Vec::new();
        for _ in 0..20_000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            // Bias towards the low ids, where the single-byte tokens live.
            let r = (state >> 33) % n;
            ids.push(if state & 1 == 0 { (r % 300) as u32 } else { r as u32 });
        }
        let mut dec = IncrementalDecoder::new(tok(), true);
        let mut streamed = String::new();
        for &i in &ids {
            streamed.push_str(&dec.push(i));
        }
        streamed.push_str(&dec.finish());
        assert_eq!(streamed, tok().decode(&ids, true).unwrap());
    }
}
