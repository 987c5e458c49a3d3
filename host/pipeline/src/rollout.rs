//! Canary rollouts: a new version of a plugin serves a share of the
//! requests beside the stable one, chosen by a stable hash of the request
//! id (or of the API key, `sticky`), until it is promoted, rolled back by
//! hand, or rolled back automatically when it fails more often, or runs
//! slower, than the stable version over the same period.
//!
//! A canary comes from an upload (`PUT /v1/plugins/{name}?canary=10`) or a
//! file in `<plugin-dir>/canary/<name>.wasm`; the file is the canary's
//! record (a restart brings it back), and a rollback removes it.

use std::sync::Arc;
use std::time::SystemTime;

use kiln_plugins::{Loaded, MetricsSnapshot};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::check_name;
use crate::registry::{PluginEntry, Source};
use crate::{PipelineError, PluginHost};

/// The folder of the plugin directory that holds canaries.
pub const CANARY_DIR: &str = "canary";

/// `[plugins.rollout]`: how canaries start and when one is rolled back.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// Percent of requests a canary from a file gets (an upload says its own).
    pub canary_share: u8,
    /// Requests a canary serves before it is judged.
    pub min_requests: u64,
    /// Rolled back when its failures per request (errors, traps, deadline
    /// hits) exceed the stable version's by more than this.
    pub max_failure_increase: f64,
    /// Rolled back when its p99 call latency exceeds the stable version's
    /// by more than this factor.
    pub max_latency_factor: f64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig { canary_share: 10, min_requests: 100, max_failure_increase: 0.05, max_latency_factor: 3.0 }
    }
}

impl RolloutConfig {
    pub fn check(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.canary_share) {
            return Err(format!("plugins.rollout.canary_share must be 1 to 100, got {}", self.canary_share));
        }
        if !(self.max_failure_increase >= 0.0 && self.max_latency_factor >= 1.0) {
            return Err("plugins.rollout: max_failure_increase must be >= 0 and max_latency_factor >= 1".into());
        }
        Ok(())
    }
}

/// What picks a request's side of a canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sticky {
    /// Each request by its id: a client sees both versions.
    Request,
    /// By API key (the request id without one): a client sees one version.
    Key,
}

/// Who a request is, for choosing between a canary and the stable version.
#[derive(Clone, Copy, Debug)]
pub struct Routing<'a> {
    pub request_id: &'a str,
    pub api_key: Option<&'a str>,
}

/// A new version serving part of the traffic.
#[derive(Clone, Debug)]
pub struct Canary {
    pub loaded: Loaded,
    pub source: Source,
    /// Percent of requests, 1 to 100.
    pub share: u8,
    pub sticky: Sticky,
    pub since: SystemTime,
    /// The stable version's counters when the canary started: both are
    /// judged over the same period.
    pub(crate) stable_at_start: MetricsSnapshot,
}

impl Canary {
    /// Whether `routing`'s request of plugin `name` goes to this canary. By
    /// key: the same answer on every replica and after a restart. By
    /// request: the id is the client's to choose, so it is hashed with this
    /// process's `salt`, and a client cannot aim requests at either side.
    pub fn serves(&self, name: &str, routing: &Routing<'_>, salt: &[u8]) -> bool {
        match (self.sticky, routing.api_key) {
            (Sticky::Key, Some(key)) => bucket(name, key, &[]) < u64::from(self.share),
            _ => bucket(name, routing.request_id, salt) < u64::from(self.share),
        }
    }
}

/// 0 to 99, uniform over request ids; per plugin name, so two canaries get
/// independent shares.
fn bucket(name: &str, basis: &str, salt: &[u8]) -> u64 {
    let digest = Sha256::new().chain_update(salt).chain_update(name).chain_update([0]).chain_update(basis).finalize();
    u64::from_le_bytes(digest[..8].try_into().unwrap_or_default()) % 100
}

/// A secret of this process for hashing request ids.
pub(crate) fn routing_salt() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    // `RandomState` is keyed from the operating system's randomness.
    let random = || std::collections::hash_map::RandomState::new().build_hasher().finish().to_le_bytes();
    let (a, b) = (random(), random());
    std::array::from_fn(|i| if i < 8 { a[i] } else { b[i - 8] })
}

/// A canary that was dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollback {
    pub at: SystemTime,
    /// The version dropped (`name@version`) and its sha256.
    pub version: String,
    pub sha256: String,
    pub automatic: bool,
    pub reason: String,
}

/// Why a canary must go, if it must: more failures per request than the
/// stable version allows, or a slower tail.
pub fn verdict(canary: &MetricsSnapshot, stable: &MetricsSnapshot, config: &RolloutConfig) -> Option<String> {
    if canary.sessions < config.min_requests {
        return None;
    }
    let (c, s) = (canary.failure_rate(), stable.failure_rate());
    if c > s + config.max_failure_increase {
        return Some(format!(
            "{:.1} % of its {} requests failed against {:.1} % on the stable version (allowed: {:.1} points more)",
            c * 100.0,
            canary.sessions,
            s * 100.0,
            config.max_failure_increase * 100.0
        ));
    }
    if let (Some(cp), Some(sp)) = (canary.p99(), stable.p99())
        && stable.sessions >= config.min_requests
        && cp.as_secs_f64() > sp.as_secs_f64() * config.max_latency_factor
    {
        return Some(format!(
            "its p99 call latency {} us is over {} x the stable version's {} us",
            cp.as_micros(),
            config.max_latency_factor,
            sp.as_micros()
        ));
    }
    None
}

/// [`verdict`] on an entry's canary, against its stable version over the
/// canary's life.
fn verdict_on(entry: &PluginEntry, config: &RolloutConfig) -> Option<String> {
    let (canary, stable) = (entry.canary.as_ref()?, entry.loaded.as_ref()?);
    // Latency like with like: while one side still serves from its baseline
    // build (tiered compilation), only failures count.
    let unlike = RolloutConfig { max_latency_factor: f64::INFINITY, ..config.clone() };
    let config = if canary.loaded.tier() == stable.tier() { config } else { &unlike };
    verdict(&canary.loaded.metrics(), &(stable.metrics() - canary.stable_at_start), config)
}

impl PluginHost {
    /// Serves `bytes` as a canary of `name` to `share` percent of requests
    /// (`None`: the configured share), kept in `<dir>/canary/` when there is
    /// a plugin directory. Nothing is written unless it can serve.
    pub fn install_canary(
        &self,
        name: &str,
        bytes: &[u8],
        share: Option<u8>,
        sticky: Sticky,
    ) -> Result<Arc<PluginEntry>, PipelineError> {
        check_name(name).map_err(PipelineError::InvalidName)?;
        let _writer = self.lock_writer();
        let (entry, loaded) = self.check_canary(name, bytes)?;
        let source = crate::registry::persist(self.canary_file(name), bytes)?;
        self.start_canary(&entry, loaded, share, sticky, source)
    }

    /// A version that can run as `name`'s canary: it loads, and it is of the
    /// stable version's kind without being the stable version.
    fn check_canary(&self, name: &str, bytes: &[u8]) -> Result<(Arc<PluginEntry>, Loaded), PipelineError> {
        let entry = self.plugin(name).filter(|e| e.loaded.is_some()).ok_or_else(|| {
            PipelineError::Conflict(format!(
                "{name} has no stable version for a canary to run beside; upload it plainly"
            ))
        })?;
        let loaded = self.validate(name, bytes)?;
        if entry.info().is_some_and(|i| i.sha256 == loaded.info().sha256) {
            return Err(PipelineError::Conflict(format!("this is already {name}'s stable version")));
        }
        let stable = entry.loaded.as_ref().map(Loaded::kind);
        if stable != Some(loaded.kind()) {
            return Err(PipelineError::Conflict(format!(
                "the canary is a {} plugin; {name} is a {}",
                loaded.kind(),
                stable.map(|k| k.to_string()).unwrap_or_default()
            )));
        }
        Ok((entry, loaded))
    }

    /// Makes `loaded` `entry`'s canary (replacing any).
    fn start_canary(
        &self,
        entry: &PluginEntry,
        loaded: Loaded,
        share: Option<u8>,
        sticky: Sticky,
        source: Source,
    ) -> Result<Arc<PluginEntry>, PipelineError> {
        let share = share.unwrap_or(self.rollout.canary_share);
        if !(1..=100).contains(&share) {
            return Err(PipelineError::Conflict(format!("a canary's share must be 1 to 100 percent, got {share}")));
        }
        let canary = Canary {
            stable_at_start: entry.loaded.as_ref().map(Loaded::metrics).unwrap_or_default(),
            loaded,
            source,
            share,
            sticky,
            since: SystemTime::now(),
        };
        let info = canary.loaded.info().to_string();
        tracing::info!(plugin = %entry.name, canary = %info, share, "canary started");
        // A canary replaced keeps its calls in the totals.
        let replaced = entry.canary.as_ref().map(|c| c.loaded.metrics()).unwrap_or_default();
        let next = Arc::new(PluginEntry { canary: Some(canary), retired: entry.retired + replaced, ..entry.clone() });
        self.store(&entry.name, Some(next.clone()));
        Ok(next)
    }

    /// Makes `name`'s canary its stable version (its file moves out of
    /// `canary/`).
    pub fn promote(&self, name: &str) -> Result<Arc<PluginEntry>, PipelineError> {
        let _writer = self.lock_writer();
        let entry = self.plugin(name).ok_or_else(|| PipelineError::UnknownPlugin(name.into()))?;
        let canary = entry.canary.clone().ok_or_else(|| PipelineError::Conflict(format!("{name} has no canary")))?;
        let source = match (&canary.source, self.file_of(name)) {
            (Source::File(from), Some(to)) => {
                std::fs::rename(from, &to).map_err(|e| PipelineError::Io(format!("{}: {e}", to.display())))?;
                Source::File(to)
            }
            (source, _) => source.clone(),
        };
        tracing::info!(plugin = name, version = %canary.loaded.info(), "canary promoted");
        Ok(self.publish(name, canary.loaded, source))
    }

    /// Drops `name`'s canary (and its file); its requests go back to the
    /// stable version.
    pub fn rollback(&self, name: &str) -> Result<Arc<PluginEntry>, PipelineError> {
        let _writer = self.lock_writer();
        self.drop_canary(name, false, "rolled back by hand".into())
    }

    pub(crate) fn drop_canary(
        &self,
        name: &str,
        automatic: bool,
        reason: String,
    ) -> Result<Arc<PluginEntry>, PipelineError> {
        let entry = self.plugin(name).ok_or_else(|| PipelineError::UnknownPlugin(name.into()))?;
        let canary = entry.canary.clone().ok_or_else(|| PipelineError::Conflict(format!("{name} has no canary")))?;
        if let Source::File(path) = &canary.source
            && let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(PipelineError::Io(format!("{}: {e}", path.display())));
        }
        let info = canary.loaded.info();
        let rollback = Rollback {
            at: SystemTime::now(),
            version: info.to_string(),
            sha256: info.sha256.clone(),
            automatic,
            reason,
        };
        if automatic {
            tracing::warn!(plugin = name, canary = %rollback.version, reason = %rollback.reason, "canary rolled back automatically");
        } else {
            tracing::info!(plugin = name, canary = %rollback.version, "canary rolled back");
        }
        let retired = entry.retired + canary.loaded.metrics();
        let next = Arc::new(PluginEntry {
            canary: None,
            rollbacks: entry.rollbacks + 1,
            last_rollback: Some(rollback),
            retired,
            ..(*entry).clone()
        });
        self.store(name, Some(next.clone()));
        Ok(next)
    }

    /// Rolls back, at once, every canary among `names` that its verdict
    /// condemns. Runs on the request path: it never waits for the lock
    /// (another change under way is judged by the next request).
    pub(crate) fn judge_canaries<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let plugins = self.registry.current.load();
        for name in names {
            let Some(entry) = plugins.get(name) else { continue };
            if verdict_on(entry, &self.rollout).is_none() {
                continue;
            }
            let Ok(_writer) = self.registry.writer.try_lock() else { continue };
            // Judged again under the lock: the canary may have changed since.
            if let Some(reason) = self.plugin(name).and_then(|e| verdict_on(&e, &self.rollout)) {
                let _ = self.drop_canary(name, true, reason);
            }
        }
    }

    /// Brings `name`'s canary in line with `<dir>/canary/<name>.wasm`: a new
    /// file starts (or replaces) the canary, a removed one drops it. Bytes
    /// that were rolled back are not served again from the file.
    pub fn sync_canary_file(&self, name: &str) -> Result<Arc<PluginEntry>, PipelineError> {
        check_name(name).map_err(PipelineError::InvalidName)?;
        let path = self.canary_file(name).ok_or(PipelineError::NoPluginDir)?;
        let _writer = self.lock_writer();
        let entry = self.plugin(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let sha256 = hex::encode(Sha256::digest(&bytes));
                let current = entry.as_ref().and_then(|e| e.canary.as_ref());
                if let (Some(entry), Some(_)) = (&entry, current.filter(|c| c.loaded.info().sha256 == sha256)) {
                    return Ok(entry.clone());
                }
                if let Some(rolled) =
                    entry.as_ref().and_then(|e| e.last_rollback.as_ref()).filter(|r| r.sha256 == sha256)
                {
                    return Err(PipelineError::Conflict(format!(
                        "{} was rolled back ({}); upload it with ?canary= to try it again",
                        rolled.version, rolled.reason
                    )));
                }
                let (share, sticky) = current.map_or((None, Sticky::Request), |c| (Some(c.share), c.sticky));
                let (entry, loaded) = self.check_canary(name, &bytes)?;
                self.start_canary(&entry, loaded, share, sticky, Source::File(path))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match entry {
                Some(entry) if entry.canary.is_some() => {
                    self.drop_canary(name, false, "its file was removed from canary/".into())
                }
                Some(entry) => Ok(entry),
                None => Err(PipelineError::UnknownPlugin(name.into())),
            },
            Err(e) => Err(PipelineError::Io(format!("{}: {e}", path.display()))),
        }
    }

    pub(crate) fn canary_file(&self, name: &str) -> Option<std::path::PathBuf> {
        self.dir.as_ref().map(|dir| dir.join(CANARY_DIR).join(format!("{name}.wasm")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_near_uniform() {
        assert_eq!(bucket("p", "req-1", b"s"), bucket("p", "req-1", b"s"));
        let under_ten = (0..10_000).filter(|i| bucket("p", &format!("req-{i}"), b"s") < 10).count();
        assert!((900..=1100).contains(&under_ten), "{under_ten} of 10000 under 10");
    }
}
