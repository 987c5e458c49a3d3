//! Reuse of computed prompt prefixes across requests.
//!
//! Requests to a chat model share long prefixes: the system prompt the chat
//! template adds, earlier turns of a conversation. Once a sequence leaves
//! the batch its prompt's keys and values are kept here (bounded by bytes,
//! least recently used first out); a new request starts from a copy of the
//! longest matching prefix and prefills only the rest. A position's keys
//! and values depend only on the tokens up to it, so the output is the same
//! as with a full prefill.

use std::collections::VecDeque;

use kiln_model::SeqCache;

#[derive(Debug)]
pub(crate) struct PrefixCache {
    /// Least recently used first.
    entries: VecDeque<Entry>,
    bytes: usize,
    capacity_bytes: usize,
}

#[derive(Debug)]
struct Entry {
    tokens: Vec<u32>,
    cache: Box<dyn SeqCache>,
}

impl PrefixCache {
    pub fn new(capacity_bytes: usize) -> Self {
        PrefixCache { entries: VecDeque::new(), bytes: 0, capacity_bytes }
    }

    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A cache holding the longest stored prefix of `prompt`, never all of it:
    /// the last prompt token must still run to give the first logits.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<Box<dyn SeqCache>> {
        let limit = prompt.len().saturating_sub(1);
        let (index, len) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(limit)))
            .max_by_key(|&(i, len)| (len, i))?;
        if len == 0 {
            return None;
        }
        let entry = self.entries.remove(index)?;
        let cache = entry.cache.prefix(len);
        self.entries.push_back(entry);
        Some(cache)
    }

    /// Keeps `cache`'s first `tokens.len()` positions for later requests.
    pub fn insert(&mut self, mut tokens: Vec<u32>, mut cache: Box<dyn SeqCache>) {
        let len = tokens.len().min(cache.len());
        if len == 0 || self.capacity_bytes == 0 {
            return;
        }
        tokens.truncate(len);
        // A stored entry that already covers this prefix only gets fresher.
        if let Some(i) = self.entries.iter().position(|e| e.tokens.starts_with(&tokens)) {
            let entry = self.entries.remove(i).expect("index from position");
            self.entries.push_back(entry);
            return;
        }
        cache.truncate(len);
        let size = cache.size_in_bytes();
        if size > self.capacity_bytes {
            return;
        }
        // An entry this one extends is redundant.
        if let Some(i) = self.entries.iter().position(|e| tokens.starts_with(&e.tokens)) {
            let old = self.entries.remove(i).expect("index from position");
            self.bytes -= old.cache.size_in_bytes();
        }
        while self.bytes + size > self.capacity_bytes {
            let Some(old) = self.entries.pop_front() else { break };
            self.bytes -= old.cache.size_in_bytes();
        }
        self.bytes += size;
        self.entries.push_back(Entry { tokens, cache });
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
