//! Builds the first-party plugins (`plugins/`) and the test guests
//! (`tests/guests/`) from source into wasm32-wasip2 components, so no
//! `.wasm` file is ever committed. They land in `target/plugins/`; the path
//! reaches the crate as `KILN_BUILT_PLUGINS`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Packages built to components: the first-party plugins, then test guests.
const PLUGINS: &[&str] = &[
    "default-sampler",
    "chat-template",
    "stop-sequences",
    "redact",
    "json-mode",
    "json-schema",
    "tool-calls",
    "hostile-sampler",
    "tagger",
    "legacy-shout",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    // Plugins also compile host crates (kiln-chat, kiln-stop) to wasm.
    for watched in ["wit", "sdk", "plugins", "tests/guests", "host/chat", "host/stop"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = root.join("target/plugins");
    build(&root, &target_dir);
    let out = target_dir.join("wasm32-wasip2/release");
    println!("cargo:rustc-env=KILN_BUILT_PLUGINS={}", out.display());
}

fn build(root: &Path, target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(target_dir)
        // The outer build's flags are for the host, not for wasm.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        // Under `cargo clippy` the plugins are linted natively as workspace
        // members; their wasm build is a plain one.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        // Components ship without debug info.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true");
    for package in PLUGINS {
        cmd.args(["-p", package]);
    }
    let status = cmd.status().expect("running cargo to build the plugins");
    if !status.success() {
        panic!(
            "building the plugins for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
        );
    }
}
