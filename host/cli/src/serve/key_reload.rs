//! `[[keys]]` reloaded while serving: on SIGHUP, and when the config file's
//! content changes (looked at every two seconds: that also sees a
//! Kubernetes ConfigMap's symlink swap, which file events can miss). A
//! reload replaces the whole key set at once; a file that does not parse,
//! or has no keys, keeps the keys in force and logs why. Only `[[keys]]`
//! is re-read; other settings still need a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use kiln_access::{KeyStore, LiveKeys};
use sha2::{Digest, Sha256};

use crate::config::FileConfig;

/// How often the file is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The content hash of the config file (`None` while it cannot be read),
/// taken when its keys are read at start, so a change made while the model
/// loads is still seen as one.
pub fn fingerprint(path: &std::path::Path) -> Option<[u8; 32]> {
    Some(Sha256::digest(std::fs::read(path).ok()?).into())
}

/// Watches `path` for new keys for as long as the runtime runs; `seen` is
/// the [`fingerprint`] of the file the keys in force came from.
pub fn spawn(path: PathBuf, keys: Arc<LiveKeys>, seen: Option<[u8; 32]>) {
    tokio::spawn(async move {
        let mut seen = seen;
        let mut hangup = hangups();
        loop {
            let asked = tokio::select! {
                () = tokio::time::sleep(LOOK_EVERY) => false,
                () = next(&mut hangup) => true,
            };
            let now = digest(path.clone()).await;
            if !asked && now == seen {
                continue;
            }
            seen = now;
            let read = path.clone();
            match tokio::task::spawn_blocking(move || load(&read)).await {
                Ok(Ok(store)) => {
                    tracing::info!(keys = store.keys().len(), asked, "API keys reloaded");
                    metrics::counter!("kiln_key_reloads_total", "outcome" => "reloaded").increment(1);
                    keys.replace(store);
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "API keys not reloaded; the keys in force stay");
                    metrics::counter!("kiln_key_reloads_total", "outcome" => "refused").increment(1);
                }
                Err(e) => tracing::error!(error = %e, "reloading API keys"),
            }
        }
    });
}

/// The keys in the file, checked as at start.
fn load(path: &std::path::Path) -> Result<KeyStore> {
    let file = FileConfig::read(path)?;
    anyhow::ensure!(
        !file.keys.is_empty(),
        "{} has no [[keys]]: a reload never leaves the server without keys",
        path.display()
    );
    Ok(KeyStore::new(file.keys)?)
}

/// The file's content hash (`None` while it cannot be read).
async fn digest(path: PathBuf) -> Option<[u8; 32]> {
    let bytes = tokio::fs::read(path).await.ok()?;
    Some(Sha256::digest(&bytes).into())
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangups() -> Hangups {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup()).map_err(|e| tracing::error!(error = %e, "cannot listen for SIGHUP")).ok()
}

#[cfg(not(unix))]
fn hangups() -> Hangups {}

/// The next SIGHUP (never, where there is none).
#[cfg(unix)]
async fn next(hangups: &mut Hangups) {
    let received = match hangups {
        Some(signal) => signal.recv().await.is_some(),
        None => false,
    };
    if !received {
        std::future::pending::<()>().await;
    }
}

#[cfg(not(unix))]
async fn next(_: &mut Hangups) {
    std::future::pending().await
}
