//! json-mode: constrains the output to one syntactically valid JSON object,
//! whatever the prompt. Before each token it hands the host the set of
//! tokens that keep the output a valid JSON prefix (a bitset over the
//! vocabulary, found by walking a byte trie of the tokens JSON's structure
//! can use with the recognizer's state, and adding the plain string tokens
//! a word at a time); when the object is complete it stops. Given the request's
//! token budget (`max_tokens` in its config) it closes the object in time,
//! so even a cut-short answer parses.

#![forbid(unsafe_code)]

mod grammar;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use grammar::{Mode, State};
use kiln_sdk::sampler::{Sampler, SamplingParams, StepPlan, TokenSet};
use kiln_sdk::trie::TokenTrie;
use kiln_sdk::{Config, vocabulary};

#[derive(Debug)]
pub struct JsonMode {
    state: State,
    tables: Arc<Tables>,
    budget: Option<u32>,
    emitted: u32,
    /// Forced tokens already applied to `state`: the host's next `last` is one of them.
    forced_pending: bool,
    /// Sets already computed in this answer, by state: most steps of an
    /// answer are inside a string at one nesting, where the set is the same.
    sets: HashMap<State, TokenSet>,
}

/// States whose sets are kept per answer (each set is vocabulary/8 bytes).
const MAX_KEPT_SETS: usize = 256;
/// Bounds what a token can add to the closing text beyond its own bytes:
/// the longest `closing_len` head (a key string inside `\u`: 4 + 1 + 5).
const MAX_CLOSING_HEAD: usize = 10;

/// The vocabulary as json-mode uses it, built once per instance.
#[derive(Debug)]
struct Tables {
    /// Tokens that may appear outside strings (all bytes in JSON's structural alphabet).
    structural: TokenTrie,
    /// Tokens that are plain string content (no quote, backslash or control byte).
    plain: TokenSet,
    /// Token ids of single ASCII characters, for closing the object.
    by_char: [Option<u32>; 128],
    /// The longest structural token, in bytes.
    longest: usize,
}

fn tables() -> Arc<Tables> {
    static TABLES: OnceLock<Arc<Tables>> = OnceLock::new();
    TABLES.get_or_init(|| Arc::new(build())).clone()
}

/// The bytes JSON's structure uses outside strings, as a table: building
/// the tables tests every byte of the vocabulary (a session's start).
const STRUCTURAL: [bool; 256] = {
    let mut table = [false; 256];
    let bytes = b" \n\t\r{}[],:\"-+.0123456789eEtrufalsn";
    let mut i = 0;
    while i < bytes.len() {
        table[bytes[i] as usize] = true;
        i += 1;
    }
    table
};

fn build() -> Tables {
    let vocab = vocabulary();
    let mut t = Tables {
        structural: TokenTrie::new(),
        plain: TokenSet::with_size(vocab.size()),
        by_char: [None; 128],
        longest: 0,
    };
    for (id, bytes) in vocab.tokens().enumerate() {
        let id = id as u32;
        if bytes.is_empty() || is_special(bytes) || vocab.is_stop(id) {
            continue;
        }
        if bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
            t.plain.insert(id);
        }
        if bytes.iter().all(|&b| STRUCTURAL[b as usize]) {
            t.structural.insert(bytes, id);
            t.longest = t.longest.max(bytes.len());
        }
        if let [b] = bytes[..]
            && b < 128
            && t.by_char[b as usize].is_none()
        {
            t.by_char[b as usize] = Some(id);
        }
    }
    t
}

/// Special tokens (`<|im_end|>`...) are never part of a JSON answer.
fn is_special(bytes: &[u8]) -> bool {
    bytes.len() > 4 && bytes.starts_with(b"<|") && bytes.ends_with(b"|>")
}

impl Sampler for JsonMode {
    fn new(_: SamplingParams, _: &[u32], config: &Config) -> Result<Self, String> {
        let budget = config
            .get("max_tokens")
            .map(|v| v.parse().map_err(|_| format!("config `max_tokens`: {v:?}")))
            .transpose()?;
        Ok(JsonMode {
            state: State::default(),
            tables: tables(),
            budget,
            emitted: 0,
            forced_pending: false,
            sets: HashMap::new(),
        })
    }

    fn step(&mut self, last: Option<u32>) -> Result<StepPlan, String> {
        if let Some(token) = last.filter(|_| !std::mem::take(&mut self.forced_pending)) {
            self.emitted += 1;
            let bytes = vocabulary().token(token).to_vec();
            // The host only samples allowed tokens: anything else is a bug,
            // and the answer would not parse.
            match self.state.feed_all(&bytes) {
                Some(state) => self.state = state,
                None => return Err(format!("token {token} does not continue the JSON object; it was not allowed")),
            }
        }
        if self.state.mode == Mode::Done {
            return Ok(StepPlan::stop());
        }
        // Within the budget the object can always be closed: never take a
        // token after which the closing text would no longer fit.
        let room = self.budget.map(|b| b.saturating_sub(self.emitted) as usize);
        if room.is_some_and(|room| room <= self.state.closing_len()) {
            return Ok(self.close());
        }
        let allowed = self.allowed_cached(room.map(|room| room - 1));
        Ok(if allowed.is_empty() { self.close() } else { StepPlan::only(allowed) })
    }
}

impl JsonMode {
    /// [`Self::allowed`], from this answer's earlier steps when the budget
    /// cannot bind: with room for any token and then the closing text, the
    /// set depends on the state alone.
    fn allowed_cached(&mut self, room_after: Option<usize>) -> TokenSet {
        let free = self.state.closing_len() + MAX_CLOSING_HEAD + self.tables.longest;
        if room_after.is_some_and(|room| room < free) {
            return self.allowed(room_after);
        }
        if let Some(set) = self.sets.get(&self.state) {
            return set.clone();
        }
        let set = self.allowed(None);
        if self.sets.len() < MAX_KEPT_SETS {
            self.sets.insert(self.state, set.clone());
        }
        set
    }

    /// Every token that keeps the output a valid JSON prefix, and (with a
    /// budget) leaves `room_after` tokens enough to close it.
    fn allowed(&self, room_after: Option<usize>) -> TokenSet {
        let vocab = vocabulary();
        let mut set = TokenSet::with_size(vocab.size());
        let fits = |state: &State| room_after.is_none_or(|room| state.closing_len() <= room);
        let in_plain_string = matches!(self.state.mode, Mode::Str { escape: grammar::Escape::None, .. });
        // Plain text inside a string leaves the closing text as it is.
        if in_plain_string && fits(&self.state) {
            set.union_with(&self.tables.plain);
        }
        let feed = |state: &mut State, b: u8| match state.feed(b) {
            Some(next) => {
                *state = next;
                true
            }
            None => false,
        };
        self.tables.structural.walk(self.state, feed, |state, ids| {
            if fits(state) {
                ids.iter().for_each(|&id| set.insert(id));
            }
        });
        set
    }

    /// Forces the text that completes the object, one character a token.
    fn close(&mut self) -> StepPlan {
        let closing = self.state.closing();
        let tokens: Option<Vec<u32>> =
            closing.bytes().map(|b| self.tables.by_char.get(b as usize).copied().flatten()).collect();
        match tokens {
            Some(tokens) if !tokens.is_empty() => {
                self.state = self.state.feed_all(closing.as_bytes()).unwrap_or(self.state);
                self.emitted += tokens.len() as u32;
                self.forced_pending = true;
                StepPlan::force(tokens)
            }
            _ => StepPlan::stop(),
        }
    }
}

kiln_sdk::export_sampler!(JsonMode);

#[cfg(test)]
mod tests;
