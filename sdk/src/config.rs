//! A plugin's configuration, as the pipeline gives it.

use std::str::FromStr;

/// `key = value` pairs from the pipeline that uses the plugin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config(pub Vec<(String, String)>);

impl Config {
    /// A configuration from `key = value` pairs, e.g. to give a plugin its
    /// settings in a native test.
    pub fn new<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Config(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of `key` parsed, or `default` when unset; a value that does
    /// not parse is an error naming the key.
    pub fn parse_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("config `{key}`: cannot parse {v:?}")),
        }
    }
}
