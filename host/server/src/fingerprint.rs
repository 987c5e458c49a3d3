//! `system_fingerprint`: a short hash of what decides an answer beyond the
//! request itself: the model file's sha256 and every plugin version the
//! request runs, with its configuration. The same on every replica and
//! after a restart; changed by any plugin or configuration change. Each
//! fingerprint served is remembered, so `GET /v1/fingerprints/{fp}` can
//! say what it stands for.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use kiln_api::fingerprint::{FingerprintModel, FingerprintPlugin, FingerprintView};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::request::ValidGeneration;

/// Fingerprints remembered at most: a new plugin version or configuration
/// makes one, so thousands means something churns; the oldest are dropped.
const MAX_REMEMBERED: usize = 4096;

/// The fingerprints this server has served.
#[derive(Debug, Default)]
pub(crate) struct Fingerprints {
    seen: Mutex<Seen>,
}

/// Each fingerprint's meaning, and the order they were first served in.
#[derive(Debug, Default)]
struct Seen {
    by_id: HashMap<String, Arc<FingerprintView>>,
    order: VecDeque<String>,
}

impl Fingerprints {
    fn remember(&self, view: FingerprintView) -> Arc<FingerprintView> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let Seen { by_id, order } = &mut *seen;
        if let Some(known) = by_id.get(&view.fingerprint) {
            return known.clone();
        }
        if order.len() >= MAX_REMEMBERED
            && let Some(oldest) = order.pop_front()
        {
            by_id.remove(&oldest);
        }
        let view = Arc::new(view);
        order.push_back(view.fingerprint.clone());
        by_id.insert(view.fingerprint.clone(), view.clone());
        view
    }

    pub fn get(&self, fingerprint: &str) -> Option<Arc<FingerprintView>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).by_id.get(fingerprint).cloned()
    }
}

impl ValidGeneration {
    /// This request's fingerprint, remembered for the lookup endpoint.
    pub(crate) fn fingerprint(&self, state: &AppState) -> Arc<FingerprintView> {
        let model = state.model();
        let mut plugins: Vec<FingerprintPlugin> = self
            .pipeline
            .as_ref()
            .map(|p| p.stages().into_iter().map(|(info, config)| plugin(info, config)).collect())
            .unwrap_or_default();
        for name in self.built_ins_used() {
            let entry = state.plugins().and_then(|p| p.plugin(name));
            plugins.extend(entry.as_ref().and_then(|e| e.info()).map(|info| plugin(info, &[])));
        }
        let model = FingerprintModel { id: model.id.clone(), sha256: model.sha256.clone() };
        // Serializing plain data cannot fail; the field order is fixed.
        let canonical = serde_json::to_vec(&(&model, &plugins)).unwrap_or_default();
        let fingerprint = format!("fp_{}", &hex::encode(Sha256::digest(&canonical))[..16]);
        state.fingerprints().remember(FingerprintView { fingerprint, model, plugins })
    }
}

fn plugin(info: &kiln_pipeline::PluginInfo, config: &[(String, String)]) -> FingerprintPlugin {
    let config: std::collections::BTreeMap<&str, &str> = config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    FingerprintPlugin {
        name: info.name.clone(),
        version: info.version.clone(),
        kind: info.kind.to_string(),
        sha256: info.sha256.clone(),
        config_sha256: hex::encode(Sha256::digest(serde_json::to_vec(&config).unwrap_or_default())),
    }
}
