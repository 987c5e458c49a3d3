//! The Hub path against a local server that answers like the Hub: the tree
//! API with LFS hashes, `resolve` URLs with Range requests, bearer tokens.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::test_util::{TestDir, read_head, sha256_hex};
use crate::{HfModel, HfSource, HubError, pull_hf};

const REPO: &str = "acme/tiny-GGUF";

fn body(name: &str) -> Vec<u8> {
    (0..200_000u32).map(|i| (i.wrapping_mul(31) ^ name.len() as u32) as u8).collect()
}

#[derive(Default)]
struct Seen {
    /// (path, Range header, Authorization header) per request.
    requests: Vec<(String, Option<String>, Option<String>)>,
}

/// A Hub with two GGUF files and a README. `cut_first`: the first download
/// of a file sends half of it and closes; `token`: required when set;
/// `lie_about`: the tree lists a wrong sha256 for this file.
struct Hub {
    endpoint: String,
    seen: Arc<Mutex<Seen>>,
}

impl Hub {
    fn start(cut_first: bool, token: Option<&'static str>, lie_about: Option<&'static str>) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let log = seen.clone();
        thread::spawn(move || {
            let mut downloads = 0;
            for stream in listener.incoming().flatten() {
                serve(stream, &log, cut_first && downloads == 0, token, lie_about, &mut downloads);
            }
        });
        Hub { endpoint, seen }
    }

    fn source(&self, token: Option<&str>) -> HfSource {
        HfSource { endpoint: self.endpoint.clone(), token: token.map(str::to_owned), revision: "main".into() }
    }

    fn requests(&self) -> Vec<(String, Option<String>, Option<String>)> {
        self.seen.lock().unwrap().requests.clone()
    }
}

const FILES: [&str; 2] = ["tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf"];

fn serve(
    mut stream: TcpStream,
    seen: &Mutex<Seen>,
    cut: bool,
    token: Option<&str>,
    lie_about: Option<&str>,
    downloads: &mut usize,
) {
    let Some(req) = read_head(&mut stream) else { return };
    let path = req.split_whitespace().nth(1).unwrap_or("").to_owned();
    let header = |name: &str| {
        req.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let (range, auth) = (header("range"), header("authorization"));
    seen.lock().unwrap().requests.push((path.clone(), range.clone(), auth.clone()));
    let respond = |stream: &mut TcpStream, status: &str, extra: &str, body: &[u8], send: usize| {
        let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n", body.len());
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body[..send]);
    };
    if token.is_some_and(|t| auth.as_deref() != Some(&format!("Bearer {t}"))) {
        return respond(&mut stream, "401 Unauthorized", "", b"{}", 2);
    }
    if path == format!("/api/models/{REPO}/tree/main?recursive=true") {
        let mut entries = vec![serde_json::json!({"type": "file", "path": "README.md", "size": 10})];
        for name in FILES {
            let data = body(name);
            let sha = if lie_about == Some(name) { "0".repeat(64) } else { sha256_hex(&data) };
            entries.push(serde_json::json!({"type": "file", "path": name, "size": data.len(),
                "lfs": {"oid": sha, "size": data.len(), "pointerSize": 134}}));
        }
        let json = serde_json::to_vec(&entries).unwrap();
        return respond(&mut stream, "200 OK", "Content-Type: application/json\r\n", &json, json.len());
    }
    let Some(name) = FILES.iter().find(|f| path == format!("/{REPO}/resolve/main/{f}")) else {
        return respond(&mut stream, "404 Not Found", "", b"not found", 9);
    };
    *downloads += 1;
    let data = body(name);
    let start =
        range.as_deref().and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok()).unwrap_or(0);
    let rest = &data[start..];
    let send = if cut { rest.len() / 2 } else { rest.len() };
    if start > 0 {
        let extra = format!("Content-Range: bytes {start}-{}/{}\r\n", data.len() - 1, data.len());
        respond(&mut stream, "206 Partial Content", &extra, rest, send);
    } else {
        respond(&mut stream, "200 OK", "", rest, send);
    }
}

fn model(spec: &str) -> HfModel {
    HfModel::parse(spec).unwrap().unwrap()
}

#[test]
fn model_refs_name_a_repo_and_maybe_a_gguf_file() {
    assert_eq!(model("hf:acme/tiny-GGUF"), HfModel { repo: REPO.into(), file: None });
    assert_eq!(model("hf:acme/tiny-GGUF/sub/x.gguf").file.as_deref(), Some("sub/x.gguf"));
    assert!(HfModel::parse("models/x.gguf").is_none(), "a path is not a Hub ref");
    for bad in ["hf:acme", "hf:acme/../x", "hf:acme/repo/readme.md", "hf:acme/re po"] {
        assert!(matches!(HfModel::parse(bad), Some(Err(HubError::BadModelRef { .. }))), "{bad}");
    }
}

#[test]
fn the_named_file_is_fetched_verified_against_its_lfs_sha256_and_then_reused() {
    let hub = Hub::start(false, None, None);
    let dir = TestDir::new("hf-named");
    let path = pull_hf(&model("hf:acme/tiny-GGUF/tiny-Q8_0.gguf"), None, &hub.source(None), dir.path(), false).unwrap();
    assert_eq!(path, dir.path().join("hf/acme/tiny-GGUF/tiny-Q8_0.gguf"));
    assert_eq!(std::fs::read(&path).unwrap(), body("tiny-Q8_0.gguf"));
    let again = pull_hf(&model("hf:acme/tiny-GGUF/tiny-Q8_0.gguf"), None, &hub.source(None), dir.path(), false);
    assert_eq!(again.unwrap(), path);
    let downloads = hub.requests().iter().filter(|r| r.0.contains("/resolve/")).count();
    assert_eq!(downloads, 1, "the cached file is not fetched again");
}

#[test]
fn a_repo_with_several_files_lists_them_unless_a_quant_picks_one() {
    let hub = Hub::start(false, None, None);
    let dir = TestDir::new("hf-choose");
    let err = pull_hf(&model("hf:acme/tiny-GGUF"), None, &hub.source(None), dir.path(), false).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("tiny-Q4_K_M.gguf, tiny-Q8_0.gguf") && message.contains("--quant"), "{message}");
    let path = pull_hf(&model("hf:acme/tiny-GGUF"), Some("q4_k_m"), &hub.source(None), dir.path(), false).unwrap();
    assert!(path.ends_with("tiny-Q4_K_M.gguf"));
    let err = pull_hf(&model("hf:acme/tiny-GGUF"), Some("Q5_K"), &hub.source(None), dir.path(), false).unwrap_err();
    assert!(err.to_string().contains("no GGUF file name holds Q5_K"), "{err}");
}

#[test]
fn a_broken_download_is_kept_and_resumed_with_a_range_request() {
    let hub = Hub::start(true, None, None);
    let dir = TestDir::new("hf-resume");
    let spec = model("hf:acme/tiny-GGUF/tiny-Q8_0.gguf");
    let err = pull_hf(&spec, None, &hub.source(None), dir.path(), false).unwrap_err();
    assert!(matches!(err, HubError::Interrupted { .. } | HubError::HubUnreachable { .. }), "{err}");
    let part = dir.path().join("hf/acme/tiny-GGUF/tiny-Q8_0.gguf.part");
    let kept = std::fs::metadata(&part).unwrap().len();
    assert_eq!(kept, 100_000, "half the file arrived and is kept");
    let path = pull_hf(&spec, None, &hub.source(None), dir.path(), false).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body("tiny-Q8_0.gguf"));
    assert!(!part.exists());
    let ranges: Vec<_> = hub.requests().into_iter().filter_map(|r| r.1).collect();
    assert_eq!(ranges, vec!["bytes=100000-".to_owned()]);
}

#[test]
fn a_file_that_does_not_match_its_sha256_is_discarded() {
    let hub = Hub::start(false, None, Some("tiny-Q8_0.gguf"));
    let dir = TestDir::new("hf-sha");
    let err =
        pull_hf(&model("hf:acme/tiny-GGUF/tiny-Q8_0.gguf"), None, &hub.source(None), dir.path(), false).unwrap_err();
    assert!(matches!(err, HubError::HashMismatch { .. }), "{err}");
    let left = dir.path().join("hf/acme/tiny-GGUF");
    assert_eq!(std::fs::read_dir(&left).unwrap().count(), 0, "neither the file nor its part is kept");
}

#[test]
fn hf_token_is_sent_as_a_bearer_token_and_its_absence_explained() {
    let hub = Hub::start(false, Some("s3cret"), None);
    let dir = TestDir::new("hf-token");
    let spec = model("hf:acme/tiny-GGUF/tiny-Q8_0.gguf");
    let err = pull_hf(&spec, None, &hub.source(None), dir.path(), false).unwrap_err();
    assert!(err.to_string().contains("401") && err.to_string().contains("HF_TOKEN"), "{err}");
    pull_hf(&spec, None, &hub.source(Some("s3cret")), dir.path(), false).unwrap();
    assert!(hub.requests().iter().skip(1).all(|r| r.2.as_deref() == Some("Bearer s3cret")));
}

#[test]
fn cached_models_start_offline_are_listed_by_name_and_removed() {
    let hub = Hub::start(false, None, None);
    let dir = TestDir::new("hf-list");
    let spec = model("hf:acme/tiny-GGUF/tiny-Q8_0.gguf");
    pull_hf(&spec, None, &hub.source(None), dir.path(), false).unwrap();
    let listed = crate::cached_models(dir.path()).unwrap();
    let names: Vec<_> = listed.iter().map(|m| (m.name.as_str(), m.size)).collect();
    assert_eq!(names, vec![("hf:acme/tiny-GGUF/tiny-Q8_0.gguf", 200_000)]);
    // Named and cached: found without asking the Hub.
    let asked = hub.requests().len();
    assert_eq!(crate::hf::ensure(&spec, &hub.source(None), dir.path(), false).unwrap(), listed[0].path);
    assert_eq!(hub.requests().len(), asked);
    crate::remove_cached(dir.path(), "hf:acme/tiny-GGUF/tiny-Q8_0.gguf").unwrap();
    assert!(crate::cached_models(dir.path()).unwrap().is_empty());
    let err = crate::remove_cached(dir.path(), "hf:acme/x/y.gguf").unwrap_err();
    assert!(matches!(err, HubError::NotCached { .. }), "{err}");
}
