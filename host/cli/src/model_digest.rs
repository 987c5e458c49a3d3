//! The model file's sha256, which every answer's fingerprint includes.
//! Hashing gigabytes takes seconds, so the digest is kept beside the other
//! caches, keyed by the file's path, size and modification time: a restart
//! on the same file reads it back.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

pub fn model_sha256(path: &Path, cache_dir: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    let identity = format!("{}\n{}\n{:?}", path.display(), meta.len(), modified);
    let record = cache_dir.join(format!("{}.sha256", &hex::encode(Sha256::digest(identity.as_bytes()))[..32]));
    if let Ok(known) = std::fs::read_to_string(&record)
        && known.len() == 64
        && known.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Ok(known);
    }
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let digest = hex::encode(hasher.finalize());
    // A cache that cannot be written only costs the next start a rehash.
    let _ = std::fs::create_dir_all(cache_dir).and_then(|()| std::fs::write(&record, &digest));
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_the_files_and_is_read_back_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.gguf");
        std::fs::write(&file, b"weights").unwrap();
        let cache = dir.path().join("digests");
        let first = model_sha256(&file, &cache).unwrap();
        assert_eq!(first, hex::encode(Sha256::digest(b"weights")));
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
        assert_eq!(model_sha256(&file, &cache).unwrap(), first);
        std::fs::write(&file, b"other weights").unwrap();
        assert_eq!(model_sha256(&file, &cache).unwrap(), hex::encode(Sha256::digest(b"other weights")));
    }
}
