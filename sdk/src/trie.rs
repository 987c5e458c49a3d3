//! A byte trie over the vocabulary, walked with a recognizer's state: the
//! way to find every token a grammar allows in microseconds rather than by
//! trying each of tens of thousands of tokens (`json-schema` and
//! `json-mode` build their allowed sets with it).

/// A byte trie of tokens in flat arrays (no allocation per node: building
/// one over a 49k-token vocabulary takes milliseconds).
#[derive(Debug)]
pub struct TokenTrie {
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

impl Default for TokenTrie {
    fn default() -> Self {
        TokenTrie::new()
    }
}

impl TokenTrie {
    /// An empty trie.
    pub fn new() -> TokenTrie {
        let mut t = TokenTrie {
            byte: Vec::new(),
            first_child: Vec::new(),
            next_sibling: Vec::new(),
            end: Vec::new(),
            more_ends: Vec::new(),
            wide_of: Vec::new(),
            wide: Vec::new(),
            fanout: Vec::new(),
        };
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

    /// Adds token `id`, whose bytes are `bytes` (several ids may share bytes).
    pub fn insert(&mut self, bytes: &[u8], id: u32) {
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

    /// Depth-first over every path `feed` accepts from `start` (a byte-level
    /// recognizer's state, fed one byte at a time; `false` rejects the byte),
    /// calling `found` with the state after each token's last byte and the
    /// tokens ending there. A recognizer finds every token it accepts while
    /// feeding each shared prefix once.
    pub fn walk<S: Copy>(&self, start: S, feed: impl Fn(&mut S, u8) -> bool, mut found: impl FnMut(&S, &[u32])) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_finds_every_token_the_recognizer_accepts_and_spell_takes_the_longest() {
        let mut trie = TokenTrie::new();
        for (id, t) in ["a", "ab", "abc", "b", "ba", "c"].iter().enumerate() {
            trie.insert(t.as_bytes(), id as u32);
        }
        trie.insert(b"ab", 9);
        // A recognizer of "a" then any number of "b": its state is the bytes seen.
        let mut found = Vec::new();
        trie.walk(
            0u32,
            |seen, b| {
                let ok = if *seen == 0 { b == b'a' } else { b == b'b' };
                *seen += 1;
                ok
            },
            |_, ids| found.extend_from_slice(ids),
        );
        found.sort_unstable();
        assert_eq!(found, [0, 1, 9]);
        assert_eq!(trie.spell(b"abcab"), Some(vec![2, 1]));
        assert_eq!(trie.spell(b"x"), None);
    }
}
