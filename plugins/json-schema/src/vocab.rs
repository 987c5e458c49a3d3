//! The vocabulary as the recognizer walks it, built once per instance: a
//! byte trie of every token that can appear in JSON text, a second of the
//! tokens that are not plain string content, the plain ones grouped by
//! length in characters, and a trie of the special tokens, which only the
//! prefix and suffix may hold.

use std::sync::{Arc, OnceLock};

use kiln_sdk::sampler::TokenSet;
use kiln_sdk::trie::TokenTrie as Trie;
use kiln_sdk::vocabulary;

/// Plain tokens are grouped by length up to this many characters.
const LONGEST_GROUP: usize = 16;

#[derive(Debug)]
pub struct Tables {
    pub all: Trie,
    pub nonplain: Trie,
    /// Special tokens (`<|...|>`) that do not stop the generation.
    pub specials: Trie,
    /// `plain[k]`: plain tokens of at most `k` characters (k <= LONGEST_GROUP).
    plain: Vec<TokenSet>,
    /// Longer plain tokens, with their lengths.
    plain_long: Vec<(u32, u32)>,
}

impl Tables {
    /// Adds every plain token of at most `room` characters.
    pub fn plain_up_to(&self, room: u32, set: &mut TokenSet) {
        set.union_with(&self.plain[room.min(LONGEST_GROUP as u32) as usize]);
        for &(id, chars) in &self.plain_long {
            if chars <= room {
                set.insert(id);
            }
        }
    }
}

/// Special tokens (`<|im_end|>`...) are never part of a JSON value.
fn is_special(bytes: &[u8]) -> bool {
    bytes.len() > 4 && bytes.starts_with(b"<|") && bytes.ends_with(b"|>")
}

pub fn tables() -> Arc<Tables> {
    static TABLES: OnceLock<Arc<Tables>> = OnceLock::new();
    TABLES.get_or_init(|| Arc::new(build())).clone()
}

fn build() -> Tables {
    let vocab = vocabulary();
    let mut t = Tables {
        all: Trie::new(),
        nonplain: Trie::new(),
        specials: Trie::new(),
        plain: vec![TokenSet::with_size(vocab.size()); LONGEST_GROUP + 1],
        plain_long: Vec::new(),
    };
    for (id, bytes) in vocab.tokens().enumerate() {
        let id = id as u32;
        if bytes.is_empty() || vocab.is_stop(id) {
            continue;
        }
        if is_special(bytes) {
            t.specials.insert(bytes, id);
            continue;
        }
        t.all.insert(bytes, id);
        // Plain: string text that is whole UTF-8 characters by itself.
        let whole = std::str::from_utf8(bytes).ok().filter(|t| t.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'));
        if let Some(text) = whole {
            let chars = text.chars().count();
            match t.plain.get_mut(chars) {
                Some(set) => set.insert(id),
                None => t.plain_long.push((id, chars as u32)),
            }
        } else {
            t.nonplain.insert(bytes, id);
        }
    }
    // From exactly k characters to at most k.
    for k in 1..t.plain.len() {
        let shorter = t.plain[k - 1].clone();
        t.plain[k].union_with(&shorter);
    }
    t
}
