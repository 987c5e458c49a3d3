//! SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`: Llama 2,
//! TinyLlama, Mistral v0.1, Phi-3, Gemma), tokenized as llama.cpp does.
//!
//! Text is split out around special tokens first (user-defined always,
//! control ones when parsing specials, longest first). Each remaining
//! fragment gets a leading space when it starts the text or follows a special
//! token (`add_space_prefix`), has its spaces replaced by `▁`, and is split
//! into characters; adjacent pieces are then merged, highest vocabulary score
//! first (leftmost on ties), as long as the merged text is a token. A
//! character that no token covers becomes its UTF-8 bytes (`<0xHH>` tokens:
//! byte fallback). This is llama.cpp's `llm_tokenizer_spm`, not the
//! `tokenizers` crate's BPE: merges here come from scores, and matching
//! llama.cpp id for id is the point (checked against `llama-tokenize`).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use crate::gguf::TokenKind;

/// SentencePiece's visible space.
const SPACE: char = '\u{2581}';

pub(crate) struct Spm {
    /// Text to id; a text stored twice resolves to its last id, like llama.cpp's map.
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    /// `<0xHH>` token of each byte, if the vocabulary has it.
    bytes: [Option<u32>; 256],
    add_space_prefix: bool,
    /// Texts split out before merging, longest first.
    specials: Vec<Special>,
}

struct Special {
    text: String,
    id: u32,
    /// Split out only when parsing specials (control and unknown tokens).
    control: bool,
    /// Whitespace after it is dropped (llama.cpp's RSTRIP, which it sets for Phi-3's specials).
    rstrip: bool,
}

/// A candidate merge of two adjacent pieces.
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The heap's top is the highest score, then the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

/// One piece of the text being merged: a byte range, linked to its neighbours.
#[derive(Clone, Copy)]
struct Piece {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    /// `phi3`: the model is a Phi-3 (its name says so), whose special tokens
    /// llama.cpp strips the whitespace after, except `<unk>`, `<s>` and
    /// `<|endoftext|>`.
    pub fn new(tokens: &[String], kinds: &[TokenKind], scores: Vec<f32>, add_space_prefix: bool, phi3: bool) -> Self {
        let ids: HashMap<String, u32> = tokens.iter().zip(0u32..).map(|(t, i)| (t.clone(), i)).collect();
        let mut bytes = [None; 256];
        for (b, slot) in bytes.iter_mut().enumerate() {
            // llama.cpp falls back to the byte as a one-character token when `<0xHH>` is missing.
            *slot = ids.get(&format!("<0x{b:02X}>")).copied().or_else(|| {
                u8::try_from(b).ok().filter(u8::is_ascii).and_then(|c| ids.get(&(c as char).to_string()).copied())
            });
        }
        let mut specials: Vec<Special> = (tokens.iter().zip(kinds).zip(0u32..))
            .filter(|((text, kind), _)| !text.is_empty() && matches!(kind, TokenKind::Control | TokenKind::UserDefined))
            .map(|((text, kind), id)| Special {
                text: text.clone(),
                id,
                control: *kind == TokenKind::Control,
                rstrip: phi3 && !["<unk>", "<s>", "<|endoftext|>"].contains(&text.as_str()),
            })
            .collect();
        specials.sort_by_key(|s| std::cmp::Reverse(s.text.len()));
        Spm { ids, scores, bytes, add_space_prefix, specials }
    }

    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// Ids of `parts`, each `(text, parse_special)`, as one text: adjacent
    /// text is merged as one (llama.cpp tokenizes the rendered prompt whole),
    /// and the space prefix rule looks across part boundaries. No BOS/EOS.
    pub fn encode(&self, parts: &[(&str, bool)], out: &mut Vec<u32>) {
        let mut fragments: Vec<Joined> = Vec::new();
        let mut strip_next = false;
        for &(text, parse_special) in parts {
            for fragment in self.partition(text, parse_special) {
                match fragment {
                    Fragment::Special(special) => {
                        fragments.push(Joined::Special(special.id));
                        strip_next = special.rstrip;
                    }
                    Fragment::Text(mut text) => {
                        if std::mem::take(&mut strip_next) {
                            text = text.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
                        }
                        match fragments.last_mut() {
                            Some(Joined::Text(joined)) => joined.push_str(text),
                            _ if text.is_empty() => {}
                            _ => fragments.push(Joined::Text(text.to_owned())),
                        }
                    }
                }
            }
        }
        let mut after_special = true;
        for fragment in fragments {
            match fragment {
                Joined::Special(id) => {
                    out.push(id);
                    after_special = true;
                }
                Joined::Text(raw) => {
                    let mut text = String::with_capacity(raw.len() + 3);
                    if self.add_space_prefix && after_special {
                        text.push(' ');
                    }
                    text.push_str(&raw);
                    self.merge(&text.replace(' ', &SPACE.to_string()), out);
                    after_special = false;
                }
            }
        }
    }

    /// `text` split around the special tokens it contains, each token's
    /// occurrences taken in turn, longest token first (llama.cpp's order).
    fn partition<'s, 't>(&'s self, text: &'t str, parse_special: bool) -> Vec<Fragment<'s, 't>> {
        let mut fragments = vec![Fragment::Text(text)];
        for special in &self.specials {
            if special.control && !parse_special {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len());
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    next.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(special.text.as_str()) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Special(special));
                    rest = &rest[at + special.text.len()..];
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// The merge loop over one fragment (spaces already `▁`).
    fn merge(&self, text: &str, out: &mut Vec<u32>) {
        let mut pieces: Vec<Piece> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            pieces.push(Piece { start, len: c.len_utf8(), prev: i.checked_sub(1), next: Some(i + 1) });
        }
        let Some(last) = pieces.last_mut() else { return };
        last.next = None;
        let mut queue = BinaryHeap::new();
        let candidate = |pieces: &[Piece], left: Option<usize>, right: Option<usize>| {
            let (left, right) = (left?, right?);
            let (l, r) = (pieces[left], pieces[right]);
            let merged = &text[l.start..r.start + r.len];
            let id = *self.ids.get(merged)?;
            Some(Bigram { left, right, score: self.scores.get(id as usize).copied().unwrap_or(0.0), len: merged.len() })
        };
        for i in 1..pieces.len() {
            queue.extend(candidate(&pieces, Some(i - 1), Some(i)));
        }
        while let Some(bigram) = queue.pop() {
            let (l, r) = (pieces[bigram.left], pieces[bigram.right]);
            // Stale: one side was merged into something else since this was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != bigram.len {
                continue;
            }
            pieces[bigram.left].len += r.len;
            pieces[bigram.left].next = r.next;
            pieces[bigram.right].len = 0;
            if let Some(next) = r.next {
                pieces[next].prev = Some(bigram.left);
            }
            queue.extend(candidate(&pieces, pieces[bigram.left].prev, Some(bigram.left)));
            queue.extend(candidate(&pieces, Some(bigram.left), pieces[bigram.left].next));
        }
        let mut at = Some(0);
        while let Some(i) = at {
            let p = pieces[i];
            let piece = &text[p.start..p.start + p.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                // Only single characters can be unknown: merges produce tokens.
                None => out.extend(piece.bytes().filter_map(|b| self.bytes[b as usize])),
            }
            at = p.next;
        }
    }
}

enum Fragment<'s, 't> {
    Text(&'t str),
    Special(&'s Special),
}

/// A fragment of the whole input: adjacent text joined across parts.
enum Joined {
    Text(String),
    Special(u32),
}

/// A token's text as it reads in output: `▁` back to a space.
pub(crate) fn decode_token(text: &str) -> Vec<u8> {
    text.replace(SPACE, " ").into_bytes()
}
