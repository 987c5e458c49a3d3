//! json-schema: constrains the output to JSON that validates against the
//! JSON schema in its config (`schema`, the text of OpenAI's
//! `response_format.json_schema.schema`). The schema is compiled once per
//! text and kept; before each token the plugin hands the host the tokens
//! that keep the output a valid prefix of such a document (compact: no
//! whitespace between tokens, each property at most once), found by
//! walking a byte trie of the vocabulary with the recognizer's state. Given
//! the request's token budget (`max_tokens`) it closes the document in time,
//! with the shortest valid completion, so even a cut-short answer validates.

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

/// Compiled schemas by their text: requests with the same schema compile it once.
static SCHEMAS: Mutex<Option<HashMap<String, Arc<Schema>>>> = Mutex::new(None);

fn compiled(text: &str) -> Result<Arc<Schema>, String> {
    let mut cache = SCHEMAS.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(s) = cache.get(text) {
        return Ok(s.clone());
    }
    let schema = Arc::new(Schema::compile(text)?);
    // A bound on what an instance keeps: schemas are small, but clients are many.
    if cache.len() >= 256 {
        cache.clear();
    }
    cache.insert(text.to_string(), schema.clone());
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
        let schema = compiled(text)?;
        let budget = config
            .get("max_tokens")
            .map(|v| v.parse().map_err(|_| format!("config `max_tokens`: {v:?}")))
            .transpose()?;
        let state = State::new(&schema);
        let tables = vocab::tables();
        let shortest = tables.all.spell(&schema.min_text[schema.root as usize]).map_or(usize::MAX, |t| t.len());
        if let Some(budget) = budget.filter(|&b| (b as usize) < shortest) {
            return Err(format!(
                "max_tokens {budget} is too small for the schema: its shortest answer takes {shortest} tokens"
            ));
        }
        Ok(JsonSchema { schema, tables, state, budget, emitted: 0, forced_pending: false })
    }

    fn step(&mut self, last: Option<u32>) -> StepPlan {
        if let Some(token) = last.filter(|_| !std::mem::take(&mut self.forced_pending)) {
            self.emitted += 1;
            let bytes = vocabulary().token(token).to_vec();
            // The host only samples allowed tokens; anything else is a bug to stop on.
            match self.state.feed_all(&self.schema, &bytes) {
                Some(state) => self.state = state,
                None => return StepPlan::stop(),
            }
        }
        if self.state.is_done() {
            return StepPlan::stop();
        }
        let room = self.budget.map(|b| b.saturating_sub(self.emitted) as usize);
        if room.is_some_and(|room| room <= self.closing_tokens(&self.state)) {
            return self.close();
        }
        let allowed = self.allowed(room.map(|room| room - 1));
        if allowed.is_empty() { self.close() } else { StepPlan::only(allowed) }
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
        trie.walk(
            self.state,
            |state, b| state.feed(schema, b),
            |state, ids| {
                if fits(state) {
                    ids.iter().for_each(|&id| set.insert(id));
                }
            },
        );
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
