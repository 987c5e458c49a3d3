//! Models from the Hugging Face Hub: `hf:ORG/REPO[/FILE.gguf]`.
//!
//! The Hub lists a repository's files with each large file's LFS sha256
//! (`GET {endpoint}/api/models/{repo}/tree/{revision}?recursive=true`) and
//! serves a file at `{endpoint}/{repo}/resolve/{revision}/{path}` (usually a
//! redirect to a CDN; Range requests are honoured). A download goes to a
//! `.part` file beside its final name and survives a failure: the next pull
//! hashes what is there and asks only for the rest. The whole file is checked
//! against the LFS sha256 before it takes its name, so a cached name only
//! ever holds a verified file. `HF_ENDPOINT` names a mirror; `HF_TOKEN` is
//! sent as a bearer token (gated and private repositories).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use ureq::Agent;

use crate::HubError;
use crate::fetch::{bar, check_hash, copy_into_hasher};

/// The Hub itself, when `HF_ENDPOINT` is unset.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A model named by `hf:ORG/REPO[/FILE.gguf]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfModel {
    /// `ORG/REPO`.
    pub repo: String,
    /// A GGUF file's path in the repository; `None`: choose from its files.
    pub file: Option<String>,
}

impl HfModel {
    /// `None` when `spec` does not start with `hf:` (a local path).
    pub fn parse(spec: &str) -> Option<Result<HfModel, HubError>> {
        let rest = spec.strip_prefix("hf:")?;
        let bad = |reason: &str| HubError::BadModelRef { given: spec.to_owned(), reason: reason.to_owned() };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() < 2 {
            return Some(Err(bad("expected hf:ORG/REPO or hf:ORG/REPO/FILE.gguf")));
        }
        let fine = |p: &&str| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !parts.iter().all(fine) {
            return Some(Err(bad("names may hold only letters, digits, '-', '_' and '.'")));
        }
        let file = (parts.len() > 2).then(|| parts[2..].join("/"));
        if file.as_ref().is_some_and(|f| !f.ends_with(".gguf")) {
            return Some(Err(bad("the file must be a .gguf")));
        }
        Some(Ok(HfModel { repo: format!("{}/{}", parts[0], parts[1]), file }))
    }
}

/// Where and as whom to ask.
#[derive(Debug, Clone)]
pub struct HfSource {
    pub endpoint: String,
    pub token: Option<String>,
    pub revision: String,
}

impl HfSource {
    /// `HF_ENDPOINT` (or the Hub), `HF_TOKEN`, revision `main`.
    pub fn from_env() -> HfSource {
        let var = |name| std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        HfSource {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
                .trim_end_matches('/')
                .to_owned(),
            token: var("HF_TOKEN"),
            revision: "main".to_owned(),
        }
    }

    fn get(&self, agent: &Agent, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let request = agent.get(url);
        match &self.token {
            Some(token) => request.header("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }
}

/// One GGUF file of a repository, as the Hub lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    oid: String,
    size: u64,
}

/// The repository's GGUF files, with the sha256 the Hub records for each.
pub fn list_gguf(agent: &Agent, source: &HfSource, repo: &str) -> Result<Vec<HfFile>, HubError> {
    let url = format!("{}/api/models/{repo}/tree/{}?recursive=true", source.endpoint, source.revision);
    let mut resp = source.get(agent, &url).call().map_err(|err| HubError::HubUnreachable { url: url.clone(), err })?;
    if !resp.status().is_success() {
        return Err(HubError::HubStatus { url, status: resp.status().as_u16() });
    }
    let entries: Vec<TreeEntry> =
        resp.body_mut().read_json().map_err(|e| HubError::BadIndex { url: url.clone(), reason: e.to_string() })?;
    let mut files: Vec<HfFile> = entries
        .into_iter()
        .filter(|e| e.kind == "file" && e.path.ends_with(".gguf"))
        .map(|e| match e.lfs {
            Some(lfs) => Ok(HfFile { path: e.path, size: lfs.size, sha256: lfs.oid }),
            // A GGUF is always an LFS file on the Hub; without its hash nothing could be verified.
            None => Err(HubError::BadIndex { url: url.clone(), reason: format!("{} has no LFS sha256", e.path) }),
        })
        .collect::<Result<_, _>>()?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// The file to fetch: the one named, else the one whose name holds `quant`
/// (e.g. `Q4_K_M`, any case), else the only GGUF file of the repository.
pub fn choose<'a>(
    repo: &str,
    files: &'a [HfFile],
    file: Option<&str>,
    quant: Option<&str>,
) -> Result<&'a HfFile, HubError> {
    let names = || files.iter().map(|f| f.path.clone()).collect::<Vec<_>>();
    let choice = |reason: String| HubError::ChooseFile { repo: repo.to_owned(), reason, files: names() };
    if let Some(file) = file {
        return files.iter().find(|f| f.path == file).ok_or_else(|| choice(format!("it has no file {file}")));
    }
    let candidates: Vec<&HfFile> = match quant {
        Some(q) => files.iter().filter(|f| f.path.to_ascii_lowercase().contains(&q.to_ascii_lowercase())).collect(),
        None => files.iter().collect(),
    };
    match (candidates.as_slice(), quant) {
        ([one], _) => Ok(one),
        ([], None) => Err(choice("it has no GGUF file".to_owned())),
        ([], Some(q)) => Err(choice(format!("no GGUF file name holds {q}"))),
        (_, Some(q)) => Err(choice(format!("several GGUF file names hold {q}; name one"))),
        (_, None) => Err(choice("it has several GGUF files; name one or pass --quant".to_owned())),
    }
}

/// The cached file when `model` names one that is there (no network),
/// else [`pull`]: `--model hf:...` on a machine that has it already starts
/// offline.
pub fn ensure(model: &HfModel, source: &HfSource, cache_dir: &Path, progress: bool) -> Result<PathBuf, HubError> {
    if let Some(file) = &model.file {
        let cached = cache_dir.join("hf").join(&model.repo).join(file);
        if cached.is_file() {
            return Ok(cached);
        }
    }
    pull(model, None, source, cache_dir, progress)
}

/// Fetches `model` into `cache_dir/hf/ORG/REPO/` (resuming a broken download)
/// unless it is there already; returns its path.
pub fn pull(
    model: &HfModel,
    quant: Option<&str>,
    source: &HfSource,
    cache_dir: &Path,
    progress: bool,
) -> Result<PathBuf, HubError> {
    let agent = crate::fetch::agent();
    let files = list_gguf(&agent, source, &model.repo)?;
    let file = choose(&model.repo, &files, model.file.as_deref(), quant)?;
    let dest = cache_dir.join("hf").join(&model.repo).join(&file.path);
    if fs::metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == file.size) {
        tracing::info!("{} is already cached", dest.display());
        return Ok(dest);
    }
    let dir = dest.parent().expect("a file in a directory");
    fs::create_dir_all(dir).map_err(HubError::io("could not create", dir))?;
    let url = format!("{}/{}/resolve/{}/{}", source.endpoint, model.repo, source.revision, file.path);
    download_resumable(&agent, source, &url, file, &dest, progress)?;
    tracing::info!("model cached at {}", dest.display());
    Ok(dest)
}

/// Downloads `url` to `dest` through `dest.part`, continuing a part already
/// there with a Range request, and verifies size and sha256 before the rename.
fn download_resumable(
    agent: &Agent,
    source: &HfSource,
    url: &str,
    file: &HfFile,
    dest: &Path,
    progress: bool,
) -> Result<(), HubError> {
    let part = PathBuf::from(format!("{}.part", dest.display()));
    let mut hasher = Sha256::new();
    let mut have = match fs::metadata(&part) {
        Ok(m) if m.len() <= file.size => m.len(),
        _ => 0,
    };
    if have > 0 {
        // What is there counts towards the hash: read it once.
        let mut f = File::open(&part).map_err(HubError::io("could not open", &part))?;
        copy_into_hasher(&mut f, &mut io::sink(), &part, &ProgressBar::hidden(), &mut hasher)?
            .map_err(HubError::io("could not read", &part))?;
    }
    let mut request = source.get(agent, url);
    if have > 0 {
        request = request.header("Range", &format!("bytes={have}-"));
    }
    let mut resp = request.call().map_err(|err| HubError::HubUnreachable { url: url.to_owned(), err })?;
    let status = resp.status().as_u16();
    match status {
        206 => tracing::info!("resuming {} at byte {have}", file.path),
        200 if have > 0 => {
            tracing::info!("{url} ignored the range; downloading {} from the start", file.path);
            (hasher, have) = (Sha256::new(), 0);
        }
        200 => {}
        416 if have == file.size => {}
        _ => return Err(HubError::HubStatus { url: url.to_owned(), status }),
    }
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(have > 0)
        .truncate(have == 0)
        .open(&part)
        .map_err(HubError::io("could not create", &part))?;
    let bar = bar(progress, Some(file.size), format!("downloading {}", file.path));
    bar.set_position(have);
    if status != 416 {
        let mut reader = resp.body_mut().with_config().limit(file.size - have + 1).reader();
        if let Err(err) = copy_into_hasher(&mut reader, &mut out, &part, &bar, &mut hasher)? {
            bar.abandon();
            return Err(HubError::Interrupted { url: url.to_owned(), err, kept: part.clone() });
        }
    }
    bar.finish_and_clear();
    out.sync_all().map_err(HubError::io("could not write", &part))?;
    drop(out);
    let len = fs::metadata(&part).map_err(HubError::io("could not read", &part))?.len();
    let actual = hex::encode(hasher.finalize());
    let verified = if len != file.size {
        Err(HubError::SizeMismatch { file: file.path.clone(), expected: file.size, actual: len })
    } else {
        check_hash(&file.path, &file.sha256, &actual)
    };
    if let Err(e) = verified {
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    fs::rename(&part, dest).map_err(HubError::io("could not move into place", dest))
}

#[cfg(test)]
#[path = "hf_tests.rs"]
mod tests;
