//! The response cache: finished deterministic generations, stored by the
//! sha256 of everything that decides their output (the model, the exact
//! prompt tokens, every sampling parameter, the limits and stop strings,
//! and the pipeline's plugin versions). Only requests whose output cannot
//! vary are served from it: temperature 0, or an explicit seed. Bounded by
//! bytes (least recently used first out) and by age.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::generation::Piece;

pub type CacheKey = [u8; 32];

#[derive(Clone, Copy, Debug)]
pub struct CacheConfig {
    /// Bytes of cached answers at most (0 disables the cache).
    pub max_bytes: usize,
    /// An answer older than this is generated anew.
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { max_bytes: 64 << 20, ttl: Duration::from_secs(600) }
    }
}

/// A finished answer as its pieces, replayed as they were produced.
pub type Answer = Arc<Vec<Piece>>;

struct Entry {
    answer: Answer,
    bytes: usize,
    stored: Instant,
}

struct Entries {
    lru: LruCache<CacheKey, Entry>,
    bytes: usize,
}

/// Counters for `/health` and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

pub struct ResponseCache {
    config: CacheConfig,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl ResponseCache {
    pub fn new(config: CacheConfig) -> Self {
        ResponseCache {
            config,
            entries: Mutex::new(Entries { lru: LruCache::unbounded(), bytes: 0 }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.max_bytes > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Entries are inserted and removed whole: a panic cannot leave one half-made.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored answer for `key`, if fresh.
    pub fn get(&self, key: &CacheKey) -> Option<Answer> {
        let mut entries = self.lock();
        let found = match entries.lru.get(key) {
            Some(entry) if entry.stored.elapsed() <= self.config.ttl => Some(entry.answer.clone()),
            Some(_) => {
                if let Some(stale) = entries.lru.pop(key) {
                    entries.bytes -= stale.bytes;
                }
                None
            }
            None => None,
        };
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores a finished answer, evicting the least recently used past the
    /// byte budget. An answer larger than the whole budget is not kept.
    pub fn put(&self, key: CacheKey, pieces: Vec<Piece>) {
        let bytes = size_of_answer(&pieces);
        if bytes > self.config.max_bytes {
            return;
        }
        let mut entries = self.lock();
        let entry = Entry { answer: Arc::new(pieces), bytes, stored: Instant::now() };
        if let Some(old) = entries.lru.put(key, entry) {
            entries.bytes -= old.bytes;
        }
        entries.bytes += bytes;
        while entries.bytes > self.config.max_bytes {
            let Some((_, evicted)) = entries.lru.pop_lru() else { break };
            entries.bytes -= evicted.bytes;
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> CacheStats {
        let entries = self.lock();
        CacheStats {
            entries: entries.lru.len(),
            bytes: entries.bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

/// What an answer costs in memory: its text and log-probabilities, plus a
/// fixed overhead per piece and per entry.
fn size_of_answer(pieces: &[Piece]) -> usize {
    use std::mem::size_of;
    let per_piece = |p: &Piece| match p {
        Piece::Text { text, tokens } => {
            let logprobs = |t: &crate::generation::TokenLogprobs| {
                size_of::<crate::generation::TokenLogprobs>() + t.top.len() * size_of::<(u32, f32)>()
            };
            text.len() + tokens.iter().map(logprobs).sum::<usize>()
        }
        Piece::Finished { .. } => 0,
    };
    // The entry, its key and the list's own bookkeeping.
    let overhead = 256 + size_of::<Entry>();
    overhead + pieces.iter().map(|p| size_of::<Piece>() + per_piece(p)).sum::<usize>()
}

/// Everything that decides a generation's output, hashed.
#[derive(Serialize)]
pub(crate) struct KeyParts<'a> {
    pub model: &'a str,
    pub tenant: Option<&'a str>,
    /// As the client gave it (text, messages or token ids): a hit needs no
    /// rendering or tokenizing.
    pub prompt: &'a crate::Prompt,
    pub params: &'a kiln_engine::SamplingParams,
    pub max_tokens: Option<u32>,
    pub default_max_tokens: Option<u32>,
    /// The client's stop strings (a template's follow from its version).
    pub stop: &'a [String],
    pub ignore_eos: bool,
    pub logprobs: bool,
    pub top_logprobs: usize,
    pub json: bool,
    /// Every plugin the request runs, in order, with its version, sha256
    /// and configuration ([`kiln_pipeline::Resolved::fingerprint`]).
    pub plugins: Vec<String>,
}

impl KeyParts<'_> {
    pub fn key(&self) -> CacheKey {
        // Serializing plain data to JSON cannot fail; the field order is fixed.
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&canonical).into()
    }
}

/// Whether a request's output is fixed by its inputs.
pub(crate) fn deterministic(params: &kiln_engine::SamplingParams) -> bool {
    params.temperature == 0.0 || params.seed.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::Piece;
    use kiln_api::{FinishReason, Usage};

    fn answer(text: &str) -> Vec<Piece> {
        vec![
            Piece::Text { text: text.into(), tokens: vec![] },
            Piece::Finished { reason: FinishReason::Stop, usage: Usage::new(1, 1) },
        ]
    }

    #[test]
    fn a_stored_answer_is_found_until_it_expires() {
        let cache = ResponseCache::new(CacheConfig { max_bytes: 1 << 20, ttl: Duration::from_millis(50) });
        assert!(cache.get(&[1; 32]).is_none());
        cache.put([1; 32], answer("hi"));
        assert_eq!(cache.get(&[1; 32]).unwrap()[0], answer("hi")[0]);
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get(&[1; 32]).is_none(), "expired");
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries, stats.bytes), (1, 2, 0, 0));
    }

    #[test]
    fn the_least_recently_used_answer_is_evicted_past_the_byte_budget() {
        let one = size_of_answer(&answer(&"x".repeat(100)));
        let cache = ResponseCache::new(CacheConfig { max_bytes: one * 2, ttl: Duration::from_secs(60) });
        cache.put([1; 32], answer(&"x".repeat(100)));
        cache.put([2; 32], answer(&"y".repeat(100)));
        assert!(cache.get(&[1; 32]).is_some(), "touching 1 makes 2 the least recently used");
        cache.put([3; 32], answer(&"z".repeat(100)));
        assert!(cache.get(&[2; 32]).is_none());
        assert!(cache.get(&[1; 32]).is_some() && cache.get(&[3; 32]).is_some());
        let stats = cache.stats();
        assert_eq!((stats.evictions, stats.entries), (1, 2));
        assert!(stats.bytes <= one * 2);
        // Larger than the whole budget: not kept.
        cache.put([4; 32], answer(&"w".repeat(one * 3)));
        assert!(cache.get(&[4; 32]).is_none());
    }

    #[test]
    fn every_input_that_decides_the_output_changes_the_key() {
        let params = kiln_engine::SamplingParams::greedy();
        let seeded = kiln_engine::SamplingParams { seed: Some(1), ..params.clone() };
        let (hi, ho) = (crate::Prompt::Text("hi".into()), crate::Prompt::Text("ho".into()));
        let chat = crate::Prompt::Chat {
            messages: vec![kiln_chat::ChatMessage::new("user", "hi")],
            add_generation_prompt: true,
        };
        let stop = ["x".to_string()];
        let key = |prompt, params, max_tokens, stop: &[String], plugin: &str| {
            KeyParts {
                model: "m",
                tenant: None,
                prompt,
                params,
                max_tokens,
                default_max_tokens: Some(16),
                stop,
                ignore_eos: false,
                logprobs: false,
                top_logprobs: 0,
                json: false,
                plugins: vec![plugin.to_string()],
            }
            .key()
        };
        let base = key(&hi, &params, Some(8), &[], "p@1 abc");
        assert_eq!(base, key(&hi, &params, Some(8), &[], "p@1 abc"));
        for changed in [
            key(&ho, &params, Some(8), &[], "p@1 abc"),
            key(&chat, &params, Some(8), &[], "p@1 abc"),
            key(&hi, &seeded, Some(8), &[], "p@1 abc"),
            key(&hi, &params, Some(9), &[], "p@1 abc"),
            key(&hi, &params, None, &[], "p@1 abc"),
            key(&hi, &params, Some(8), &stop, "p@1 abc"),
            key(&hi, &params, Some(8), &[], "p@1 abd"),
        ] {
            assert_ne!(changed, base);
        }
    }

    #[test]
    fn only_greedy_or_seeded_requests_are_deterministic() {
        let greedy = kiln_engine::SamplingParams::greedy();
        assert!(deterministic(&greedy));
        let warm = kiln_engine::SamplingParams { temperature: 0.7, ..greedy.clone() };
        assert!(!deterministic(&warm));
        assert!(deterministic(&kiln_engine::SamplingParams { seed: Some(3), ..warm }));
    }
}
