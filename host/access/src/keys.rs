//! API keys: digests, scopes, constant-time lookup.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AccessError;

/// What a key may do. `admin` includes the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Inference and token counting.
    Generate,
    /// Scraping `/metrics` (when it is not public): for a scraper that
    /// should not also be able to replace plugins.
    Metrics,
    /// Everything, plugin administration included.
    Admin,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Generate => "generate",
            Scope::Metrics => "metrics",
            Scope::Admin => "admin",
        })
    }
}

/// One key as configured (`[[keys]]` in kiln.toml).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Who the key belongs to; shown in logs and metrics, never the key.
    pub name: String,
    /// Hex sha256 of the key (`kiln keys create` prints it).
    pub sha256: String,
    #[serde(default = "generate_only")]
    pub scopes: Vec<Scope>,
    /// Overrides of the server's default limits for this key.
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    /// The pipelines this key's requests may run, the first when they name
    /// none; empty: any (the server's default when they name none).
    #[serde(default)]
    pub pipelines: Vec<String>,
    /// The older form of `pipelines` with one name: the only pipeline this
    /// key may run.
    pub pipeline: Option<String>,
    /// Signs the webhooks of this key's tasks (else `[tasks] webhook_secret`).
    #[serde(default)]
    pub webhook_secret: Option<Secret>,
}

/// A string never shown by `Debug` (configurations get logged).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl KeyConfig {
    /// The pipelines this key may run, its default first; none: any.
    pub fn allowed_pipelines(&self) -> impl Iterator<Item = &str> {
        self.pipelines.iter().chain(&self.pipeline).map(String::as_str)
    }
}

fn generate_only() -> Vec<Scope> {
    vec![Scope::Generate]
}

/// A configured key, found by [`KeyStore::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub config: KeyConfig,
    digest: [u8; 32],
}

impl Key {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn allows(&self, scope: Scope) -> bool {
        self.config.scopes.contains(&Scope::Admin) || self.config.scopes.contains(&scope)
    }
}

/// Every configured key.
#[derive(Clone, Debug, Default)]
pub struct KeyStore {
    keys: Vec<Key>,
}

impl KeyStore {
    /// Checks every entry: a well-formed digest, a name, at least one scope,
    /// no name or digest twice.
    pub fn new(configs: Vec<KeyConfig>) -> Result<KeyStore, AccessError> {
        let mut keys: Vec<Key> = Vec::with_capacity(configs.len());
        for (index, config) in configs.into_iter().enumerate() {
            let bad = |message: String| AccessError::BadKey { index, name: config.name.clone(), message };
            let mut digest = [0u8; 32];
            hex::decode_to_slice(config.sha256.trim(), &mut digest)
                .map_err(|e| bad(format!("sha256 must be 64 hex digits ({e})")))?;
            if config.name.trim().is_empty() {
                return Err(bad("name must not be empty".into()));
            }
            if config.scopes.is_empty() {
                return Err(bad("scopes must list at least one of generate, metrics, admin".into()));
            }
            if config.requests_per_minute == Some(0) || config.tokens_per_minute == Some(0) {
                return Err(bad("a limit of 0 would refuse every request; leave it out for the default".into()));
            }
            if config.pipeline.is_some() && !config.pipelines.is_empty() {
                return Err(bad(
                    "give `pipelines` (the allowed list, the default first) or `pipeline`, not both".into()
                ));
            }
            if keys.iter().any(|k| k.config.name == config.name) {
                return Err(bad("another key has the same name".into()));
            }
            if keys.iter().any(|k| k.digest == digest) {
                return Err(bad("another key has the same sha256".into()));
            }
            keys.push(Key { config, digest });
        }
        Ok(KeyStore { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The key `presented` is, if any. Its digest is compared with every
    /// configured one, in constant time and without stopping at a match, so
    /// the answer's timing says nothing about which digests exist.
    pub fn verify(&self, presented: &str) -> Option<&Key> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found
    }
}

/// A new random key: `kiln-` and 64 hex digits (256 bits).
/// The keys in force, replaceable while serving: a reload swaps the whole
/// set at once, so a request sees the old keys or the new, never a mix.
#[derive(Debug)]
pub struct LiveKeys(arc_swap::ArcSwap<KeyStore>);

impl LiveKeys {
    pub fn new(keys: KeyStore) -> Self {
        LiveKeys(arc_swap::ArcSwap::from_pointee(keys))
    }

    /// The keys in force now.
    pub fn current(&self) -> std::sync::Arc<KeyStore> {
        self.0.load_full()
    }

    /// From now on, `keys` are the ones in force.
    pub fn replace(&self, keys: KeyStore) {
        self.0.store(std::sync::Arc::new(keys));
    }
}

pub fn generate_key() -> Result<String, AccessError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AccessError::Random(e.to_string()))?;
    Ok(format!("kiln-{}", hex::encode(bytes)))
}

/// The digest to configure for `key`.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, key: &str, scopes: Vec<Scope>) -> KeyConfig {
        KeyConfig {
            name: name.into(),
            sha256: hash_key(key),
            scopes,
            requests_per_minute: None,
            tokens_per_minute: None,
            pipelines: Vec::new(),
            pipeline: None,
            webhook_secret: None,
        }
    }

    #[test]
    fn a_key_is_found_by_its_digest_and_carries_its_scopes() {
        let store = KeyStore::new(vec![
            config("app", "kiln-app", vec![Scope::Generate]),
            config("ops", "kiln-ops", vec![Scope::Admin]),
        ])
        .unwrap();
        let app = store.verify("kiln-app").unwrap();
        assert_eq!(app.name(), "app");
        assert!(app.allows(Scope::Generate) && !app.allows(Scope::Admin));
        let ops = store.verify("kiln-ops").unwrap();
        assert!(ops.allows(Scope::Generate) && ops.allows(Scope::Admin), "admin includes generate");
        assert!(store.verify("kiln-nobody").is_none());
        assert!(store.verify("").is_none());
        // The stored digest itself is not a key.
        assert!(store.verify(&hash_key("kiln-app")).is_none());
    }

    #[test]
    fn bad_entries_are_refused_naming_the_key() {
        let mut short = config("short", "k", vec![Scope::Generate]);
        short.sha256.truncate(10);
        let err = KeyStore::new(vec![short]).unwrap_err().to_string();
        assert!(err.contains("keys[0] (short)") && err.contains("64 hex"), "{err}");
        let twice = KeyStore::new(vec![config("a", "k", vec![Scope::Generate]), config("b", "k", vec![Scope::Admin])]);
        assert!(twice.unwrap_err().to_string().contains("same sha256"));
        assert!(KeyStore::new(vec![config("a", "k", vec![])]).is_err());
    }

    #[test]
    fn generated_keys_are_random_and_verify_against_their_hash() {
        let (a, b) = (generate_key().unwrap(), generate_key().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 5 + 64);
        let store = KeyStore::new(vec![config("new", &a, vec![Scope::Generate])]).unwrap();
        assert!(store.verify(&a).is_some() && store.verify(&b).is_none());
    }

    #[test]
    fn keys_parse_from_toml_with_generate_as_the_default_scope() {
        #[derive(Debug, Deserialize)]
        struct File {
            keys: Vec<KeyConfig>,
        }
        let text = format!("[[keys]]\nname = \"app\"\nsha256 = \"{}\"\ntokens_per_minute = 1000\n", hash_key("x"));
        let file: File = toml::from_str(&text).unwrap();
        assert_eq!(file.keys[0].scopes, [Scope::Generate]);
        assert_eq!(file.keys[0].tokens_per_minute, Some(1000));
        let unknown = toml::from_str::<File>("[[keys]]\nname = \"a\"\nsha = \"0\"\n").unwrap_err();
        assert!(unknown.to_string().contains("sha"), "{unknown}");
    }

    #[test]
    fn a_key_runs_only_its_pipelines_and_names_them_one_way() {
        let mut key = config("app", "kiln-app", vec![Scope::Generate]);
        assert_eq!(key.allowed_pipelines().count(), 0, "no list: any pipeline");
        key.pipelines = vec!["safe".into(), "fast".into()];
        assert_eq!(key.allowed_pipelines().collect::<Vec<_>>(), ["safe", "fast"]);
        key.pipeline = Some("other".into());
        let err = KeyStore::new(vec![key]).unwrap_err().to_string();
        assert!(err.contains("keys[0] (app)") && err.contains("not both"), "{err}");
        let mut old = config("old", "kiln-old", vec![Scope::Generate]);
        old.pipeline = Some("safe".into());
        assert_eq!(old.allowed_pipelines().collect::<Vec<_>>(), ["safe"]);
    }

    #[test]
    fn admin_includes_metrics_but_metrics_is_only_metrics() {
        let store = KeyStore::new(vec![
            config("ops", "kiln-ops", vec![Scope::Admin]),
            config("scraper", "kiln-scraper", vec![Scope::Metrics]),
        ])
        .unwrap();
        assert!(store.verify("kiln-ops").unwrap().allows(Scope::Metrics));
        let scraper = store.verify("kiln-scraper").unwrap();
        assert!(scraper.allows(Scope::Metrics));
        assert!(!scraper.allows(Scope::Generate) && !scraper.allows(Scope::Admin));
    }

    #[test]
    fn a_replaced_key_set_is_the_one_in_force() {
        let keys = |names: &[&str]| {
            KeyStore::new(
                names
                    .iter()
                    .map(|n| KeyConfig {
                        name: n.to_string(),
                        sha256: hash_key(n),
                        scopes: vec![Scope::Generate],
                        requests_per_minute: None,
                        tokens_per_minute: None,
                        pipelines: Vec::new(),
                        pipeline: None,
                        webhook_secret: None,
                    })
                    .collect(),
            )
            .unwrap()
        };
        let live = LiveKeys::new(keys(&["a", "b"]));
        let before = live.current();
        live.replace(keys(&["a"]));
        assert!(live.current().verify("b").is_none(), "revoked");
        assert!(live.current().verify("a").is_some());
        assert!(before.verify("b").is_some(), "a request already admitted keeps the set it saw");
    }
}
