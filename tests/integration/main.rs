//! kiln's end-to-end tests: the real `kiln` binary on the real default model.
//!
//! The model comes from `$KILN_MODEL` or kiln's cache, fetched on first use.

mod cli;
mod deploy;
mod parity;
mod production;
mod reload;
mod replicas;
mod serve;
mod tasks;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `kiln` binary cargo built for these tests.
pub fn kiln() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running kiln")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Held by the tests that saturate the machine (the benchmark) and the one
/// that measures a latency (hot reload), so they never run side by side.
pub static MACHINE_HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`MACHINE_HEAVY`] (a failed test holding it does not poison the rest).
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    MACHINE_HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The real default model (`$KILN_MODEL`, else kiln's cache, fetched on first use).
pub fn model_path() -> PathBuf {
    kiln_hub::resolve_model(None, false).expect("the default model is needed by these tests")
}
