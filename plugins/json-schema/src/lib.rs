//! json-schema: constrains the output to JSON that validates against the
//! JSON schema in its config (`schema`, the text of OpenAI's
//! `response_format.json_schema.schema`). The schema is compiled once per
//! text and kept; before each token the plugin hands the host the tokens
//! that keep the output a valid prefix of such a document (compact: no
//! whitespace between tokens, each property at most once), found by
//! walking a byte trie of the vocabulary with the recognizer's state. Given
//! the request's token budget (`max_tokens`) it closes the document in time,
//! with the shortest valid completion, so even a cut-short answer validates.
//!
//! Config keys:
//! - `schema` (required): the JSON schema; see [`schema`] for the subset,
//!   including anyOf/oneOf of objects told apart by a `const` property
//!   (one tool call among several functions: `"name": {"const": ...}`).
//! - `max_tokens`: the budget; a budget too small for the shortest answer
//!   (prefix, shortest value and suffix) is refused.
//! - `prefix`, `suffix` (default empty): literal text around the value, as
//!   a tool call's syntax wants it (`<tool_call>\n` ... `\n</tool_call>`,
//!   or `[TOOL_CALLS]` and nothing). The output is exactly the prefix, the
//!   value and the suffix, then the plugin stops. The model picks its own
//!   tokens for them: any whose bytes go on with the text, a token may run
//!   from the prefix into the value or from the value into the suffix, and
//!   special tokens (`<|...|>`) that lie within the prefix or suffix are
//!   allowed there. Closing in time forces the rest of the suffix too.

#![forbid(unsafe_code)]

mod machine;
mod schema;
mod vocab;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_sdk::sampler::{Sampler, SamplingParams, StepPlan, TokenSet};
use kiln_sdk::{Config, vocabulary};
use machine::State;
pub use schema::Schema;
use vocab::Tables;

/// Compiled schemas by their text, prefix and suffix: requests with the same
/// schema compile it once.
type Key = (String, String, String);
static SCHEMAS: Mutex<Option<HashMap<Key, Arc<Schema>>>> = Mutex::new(None);

fn compiled(text: &str, prefix: &str, suffix: &str) -> Result<Arc<Schema>, String> {
    let mut cache = SCHEMAS.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    let key = (text.to_string(), prefix.to_string(), suffix.to_string());
    if let Some(s) = cache.get(&key) {
        return Ok(s.clone());
    }
    let schema = Arc::new(Schema::compile(text)?.wrapped(prefix, suffix));
    // A bound on what an instance keeps: schemas are small, but clients are many.
    if cache.len() >= 256 {
        cache.clear();
    }
    cache.insert(key, schema.clone());
    Ok(schema)
}

#[derive(Debug)]
pub struct JsonSchema {
    schema: Arc<Schema>,
    tables: Arc<Tables>,
    state: State,
    budget: Option<u32>,
    emitted: u32,
    /// Forced tokens already applied to `state`: the host's next `last` is one of them.
    forced_pending: bool,
}

impl Sampler for JsonSchema {
    fn new(_: SamplingParams, _: &[u32], config: &Config) -> Result<Self, String> {
        let text = config.get("schema").ok_or("config `schema`: the JSON schema is missing")?;
        let (prefix, suffix) = (config.get("prefix").unwrap_or(""), config.get("suffix").unwrap_or(""));
        let schema = compiled(text, prefix, suffix)?;
        let budget = config
            .get("max_tokens")
            .map(|v| v.parse().map_err(|_| format!("config `max_tokens`: {v:?}")))
            .transpose()?;
        let state = State::new(&schema);
        let tables = vocab::tables();
        let (what, take) = match (prefix.is_empty(), suffix.is_empty()) {
            (true, true) => ("the schema's shortest answer", "it takes"),
            (false, true) => ("the prefix and the schema's shortest value", "together they take"),
            (true, false) => ("the schema's shortest value and the suffix", "together they take"),
            (false, false) => ("the prefix, the schema's shortest value and the suffix", "together they take"),
        };
        let closing = state.closing(&schema);
        let Some(shortest) = tables.all.spell(&closing).map(|t| t.len()) else {
            return Err(format!("the vocabulary cannot spell {what}: {:?}", String::from_utf8_lossy(&closing)));
        };
        if let Some(budget) = budget.filter(|&b| (b as usize) < shortest) {
            return Err(format!("max_tokens {budget} is too small for {what}: {take} {shortest} tokens"));
        }
        Ok(JsonSchema { schema, tables, state, budget, emitted: 0, forced_pending: false })
    }

    fn step(&mut self, last: Option<u32>) -> Result<StepPlan, String> {
        if let Some(token) = last.filter(|_| !std::mem::take(&mut self.forced_pending)) {
            self.emitted += 1;
            let bytes = vocabulary().token(token).to_vec();
            // The host only samples allowed tokens: anything else is a bug,
            // and the answer would not validate.
            match self.state.feed_all(&self.schema, &bytes) {
                Some(state) => self.state = state,
                None => return Err(format!("token {token} does not continue a valid answer; it was not allowed")),
            }
        }
        if self.state.is_done() {
            return Ok(StepPlan::stop());
        }
        let room = self.budget.map(|b| b.saturating_sub(self.emitted) as usize);
        if room.is_some_and(|room| room <= self.closing_tokens(&self.state)) {
            return Ok(self.close());
        }
        let allowed = self.allowed(room.map(|room| room - 1));
        Ok(if allowed.is_empty() { self.close() } else { StepPlan::only(allowed) })
    }
}

impl JsonSchema {
    /// Every token that keeps the output a valid prefix and (with a budget)
    /// leaves `room_after` tokens enough to complete it.
    pub fn allowed(&self, room_after: Option<usize>) -> TokenSet {
        let schema = &self.schema;
        let tables = &self.tables;
        let mut set = TokenSet::with_size(vocabulary().size());
        // A completion takes at most as many tokens as it has bytes: spell it
        // out only when its bytes would not fit.
        let fits = |s: &State| {
            room_after.is_none_or(|room| {
                let closing = s.closing(schema);
                closing.len() <= room || tables.all.spell(&closing).is_some_and(|t| t.len() <= room)
            })
        };
        let trie = match self.state.string_room(schema) {
            // Plain text inside a string: the precomputed sets by length.
            Some(room) if fits(&self.state) => {
                tables.plain_up_to(room, &mut set);
                &tables.nonplain
            }
            _ => &tables.all,
        };
        let mut found = |state: &State, ids: &[u32]| {
            if fits(state) {
                ids.iter().for_each(|&id| set.insert(id));
            }
        };
        trie.walk(self.state, |state, b| state.feed(schema, b), &mut found);
        // Special tokens only within the prefix or the suffix.
        if self.state.in_literal() {
            tables.specials.walk(self.state, |state, b| state.in_literal() && state.feed(schema, b), &mut found);
        }
        set
    }

    /// Tokens the shortest completion from `state` takes, spelled greedily.
    fn closing_tokens(&self, state: &State) -> usize {
        self.tables.all.spell(&state.closing(&self.schema)).map_or(usize::MAX, |t| t.len())
    }

    /// Forces the shortest text that completes the document.
    fn close(&mut self) -> StepPlan {
        let closing = self.state.closing(&self.schema);
        match self.tables.all.spell(&closing) {
            Some(tokens) if !tokens.is_empty() => {
                self.state = self.state.feed_all(&self.schema, &closing).unwrap_or(self.state);
                self.emitted += tokens.len() as u32;
                self.forced_pending = true;
                StepPlan::force(tokens)
            }
            _ => StepPlan::stop(),
        }
    }
}

kiln_sdk::export_sampler!(JsonSchema);

#[cfg(test)]
mod tests;
