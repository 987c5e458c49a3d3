//! The vocabulary as the recognizer walks it, built once per instance: a
//! byte trie of every token that can appear in JSON text, a second of the
//! tokens that are not plain string content, the plain ones grouped by
//! length in characters, and a trie of the special tokens, which only the
//! prefix and suffix may hold.

use std::sync::{Arc, OnceLock};

use kiln_sdk::sampler::TokenSet;
use kiln_sdk::vocabulary;

use crate::machine::State;

/// Plain tokens are grouped by length up to this many characters.
const LONGEST_GROUP: usize = 16;

/// A byte trie in flat arrays (no allocation per node: building one over a
/// 49k-token vocabulary is part of every session's start).
#[derive(Debug, Default)]
pub struct Trie {
    byte: Vec<u8>,
    first_child: Vec<u32>,
    next_sibling: Vec<u32>,
    /// The token that ends at each node (`NONE` if none).
    end: Vec<u32>,
    /// Further tokens with the same bytes as a node's `end`, by node.
    more_ends: Vec<(u32, u32)>,
    /// Children by byte of the nodes with many (the root, a space...), looked
    /// up directly: `wide_of[node]` indexes `wide` (`NONE`: a short list).
    wide_of: Vec<u32>,
    wide: Vec<[u32; 256]>,
    /// Children per node, to know when a node turns wide.
    fanout: Vec<u16>,
}

/// A node with more children than this gets a direct table.
const WIDE: u16 = 12;

const NONE: u32 = u32::MAX;

impl Trie {
    fn new() -> Trie {
        let mut t = Trie::default();
        t.add_node(0);
        t
    }

    fn add_node(&mut self, b: u8) -> u32 {
        self.byte.push(b);
        self.first_child.push(NONE);
        self.next_sibling.push(NONE);
        self.end.push(NONE);
        self.wide_of.push(NONE);
        self.fanout.push(0);
        (self.byte.len() - 1) as u32
    }

    fn child(&self, node: u32, b: u8) -> Option<u32> {
        if let Some(table) = self.wide.get(self.wide_of[node as usize] as usize) {
            return Some(table[b as usize]).filter(|&c| c != NONE);
        }
        let mut c = self.first_child[node as usize];
        while c != NONE {
            if self.byte[c as usize] == b {
                return Some(c);
            }
            c = self.next_sibling[c as usize];
        }
        None
    }

    fn insert(&mut self, bytes: &[u8], id: u32) {
        let mut node = 0u32;
        for &b in bytes {
            node = match self.child(node, b) {
                Some(c) => c,
                None => {
                    let c = self.add_node(b);
                    self.next_sibling[c as usize] = self.first_child[node as usize];
                    self.first_child[node as usize] = c;
                    self.fanout[node as usize] += 1;
                    match self.wide.get_mut(self.wide_of[node as usize] as usize) {
                        Some(table) => table[b as usize] = c,
                        None if self.fanout[node as usize] > WIDE => {
                            let mut table = [NONE; 256];
                            let mut child = self.first_child[node as usize];
                            while child != NONE {
                                table[self.byte[child as usize] as usize] = child;
                                child = self.next_sibling[child as usize];
                            }
                            self.wide.push(table);
                            self.wide_of[node as usize] = (self.wide.len() - 1) as u32;
                        }
                        None => {}
                    }
                    c
                }
            };
        }
        match self.end[node as usize] {
            NONE => self.end[node as usize] = id,
            _ => self.more_ends.push((node, id)),
        }
    }

    fn ends(&self, node: u32, out: &mut Vec<u32>) {
        out.clear();
        if self.end[node as usize] != NONE {
            out.push(self.end[node as usize]);
            out.extend(self.more_ends.iter().filter(|(n, _)| *n == node).map(|(_, id)| *id));
        }
    }

    /// `bytes` as the longest tokens that spell it, left to right; `None`
    /// when some byte starts no token.
    pub fn spell(&self, bytes: &[u8]) -> Option<Vec<u32>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let (mut node, mut best) = (0u32, None);
            for (i, &b) in bytes[at..].iter().enumerate() {
                let Some(child) = self.child(node, b) else { break };
                node = child;
                if self.end[node as usize] != NONE {
                    best = Some((self.end[node as usize], i + 1));
                }
            }
            let (id, len) = best?;
            out.push(id);
            at += len;
        }
        Some(out)
    }

    /// Depth-first over every path `feed` accepts from `start`, calling
    /// `found` with the state after each token's last byte.
    pub fn walk(&self, start: State, feed: impl Fn(&mut State, u8) -> bool, mut found: impl FnMut(&State, &[u32])) {
        let mut stack = vec![(0u32, start)];
        let mut ends = Vec::new();
        while let Some((node, state)) = stack.pop() {
            let mut child = self.first_child[node as usize];
            while child != NONE {
                let mut next = state;
                if feed(&mut next, self.byte[child as usize]) {
                    self.ends(child, &mut ends);
                    if !ends.is_empty() {
                        found(&next, &ends);
                    }
                    if self.first_child[child as usize] != NONE {
                        stack.push((child, next));
                    }
                }
                child = self.next_sibling[child as usize];
            }
        }
    }
}

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
