//! Hot reload under load, on the real binary: a plugin file replaced again
//! and again (once with a broken file) while clients keep generating.
//!
//! It prints how long each new version took to become visible but asserts
//! no time: with `KILN_BENCH_RELOAD=N` it writes N new versions instead of
//! 5 and is the reload-latency benchmark (`tests/bench/reload_latency.sh`).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::serve::Server;

const CLIENTS: usize = 4;

/// Clients running at once, unless `KILN_BENCH_RELOAD_CLIENTS` says how many.
fn clients() -> usize {
    std::env::var("KILN_BENCH_RELOAD_CLIENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(CLIENTS)
}
/// Good versions written after the first, unless `KILN_BENCH_RELOAD` says
/// how many; one broken file comes among them.
const NEW_VERSIONS: u32 = 5;
const BROKEN_AFTER: u32 = 3;
/// The version the broken file would have been.
const BROKEN: u32 = 999;

/// How many good versions to write after the first.
fn new_versions() -> u32 {
    let Ok(text) = std::env::var("KILN_BENCH_RELOAD") else { return NEW_VERSIONS };
    let n: u32 = text.parse().unwrap_or_else(|_| panic!("KILN_BENCH_RELOAD={text:?}: a number of versions"));
    assert!((BROKEN_AFTER..BROKEN - 1).contains(&n), "KILN_BENCH_RELOAD: from {BROKEN_AFTER} to {}", BROKEN - 2);
    n
}

/// The `p`th percentile (nearest rank) of `sorted`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The tagger guest with its tag patched to `version`: the same code, a
/// different file, every chunk of its output marked `<vNNNNNN>`.
fn tagger(version: u32) -> Vec<u8> {
    let mut bytes = std::fs::read(kiln_plugins::built_plugins_dir().join("tagger.wasm")).unwrap();
    let marker = b"KILN-TAG:v000000";
    let at = bytes.windows(marker.len()).position(|w| w == marker).expect("the tag is in the component's data");
    bytes[at..at + marker.len()].copy_from_slice(format!("KILN-TAG:v{version:06}").as_bytes());
    bytes
}

/// Every version tag in `text`.
fn tags(text: &str) -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("<v") {
        let candidate = &rest[at + 2..];
        if candidate.len() > 6 && candidate.as_bytes()[6] == b'>' && candidate[..6].bytes().all(|b| b.is_ascii_digit())
        {
            found.insert(candidate[..6].parse().unwrap());
        }
        rest = &rest[at + 2..];
    }
    found
}

/// `GET /v1/plugins`: every plugin's status.
fn plugins(server: &Server) -> Vec<Value> {
    let (status, body) = server.request("GET", "/v1/plugins", "");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let mut list: Value = serde_json::from_str(&body).unwrap();
    serde_json::from_value(list["plugins"].take()).unwrap()
}

fn tagger_status(server: &Server) -> Value {
    plugins(server).into_iter().find(|p| p["name"] == "tagger").expect("tagger is listed")
}

/// Whether every plugin serves from the build `compiler` ends on.
fn all_settled(server: &Server, compiler: &str) -> bool {
    let end = if compiler == "baseline" { "baseline" } else { "optimized" };
    plugins(server).iter().all(|p| p["compiled"] == end)
}

/// Polls `GET /v1/plugins` until `ready` holds for the tagger.
fn wait_for(server: &Server, what: &str, ready: impl Fn(&Value) -> bool) {
    let started = Instant::now();
    loop {
        if ready(&tagger_status(server)) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{what}: not seen within 10 s: {}", server.log());
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// As editors save (a temporary file renamed over the old one) or as `cp` does (in place).
fn land(path: &Path, bytes: &[u8], by_rename: bool) {
    if by_rename {
        let tmp = path.with_extension("wasm.swp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    } else {
        std::fs::write(path, bytes).unwrap();
    }
}

struct Answer {
    status: String,
    body: String,
    started: Instant,
}

#[test]
fn plugin_files_replaced_under_load_fail_no_request_and_never_reload_the_model() {
    let _alone = crate::exclusive();
    let new_versions = new_versions();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let file = plugins.join("tagger.wasm");
    std::fs::write(&file, tagger(1)).unwrap();
    let config = dir.path().join("kiln.toml");
    // The benchmark compares compilers with KILN_BENCH_RELOAD_COMPILER.
    let compiler = std::env::var("KILN_BENCH_RELOAD_COMPILER").unwrap_or_else(|_| "tiered".into());
    std::fs::write(
        &config,
        format!("[plugins]\ndir = \"plugins\"\ncompiler = \"{compiler}\"\n\n[pipelines.tagged]\npost = [\"tagger\"]\n"),
    )
    .unwrap();
    // A compile cache of its own: every version is compiled, as a new file would be.
    let cache = dir.path().join("cache");
    let model = crate::model_path();
    let args = ["--config", config.to_str().unwrap(), "--model", model.to_str().unwrap(), "--insecure-no-auth"];
    let server = Arc::new(Server::start_with(&args, "info", &[("KILN_CACHE_DIR", &cache)]));

    let stop = Arc::new(AtomicBool::new(false));
    // Answers finished so far, for the clients' throughput with and without swaps.
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Versions some answer has come from so far.
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let clients: Vec<_> = (0..clients())
        .map(|i| {
            let (server, stop, seen, finished) = (server.clone(), stop.clone(), seen.clone(), finished.clone());
            std::thread::spawn(move || {
                // Half the clients stream.
                let path = if i % 2 == 0 { "/v1/generate" } else { "/v1/generate/stream" };
                // Sampled without a seed: never from the response cache, so
                // every answer is decoded while versions change.
                let body = format!(
                    r#"{{"prompt": "Count from {i} upwards.", "max_tokens": 8, "temperature": 0.7, "pipeline": "tagged"}}"#
                );
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let (status, body) = server.request("POST", path, &body);
                    seen.lock().unwrap().extend(tags(&body));
                    finished.fetch_add(1, Ordering::Relaxed);
                    answers.push(Answer { status, body, started });
                }
                answers
            })
        })
        .collect();

    // Each version serves until an answer of it has come back.
    let wait_served = |version: u32| {
        let started = Instant::now();
        while !seen.lock().unwrap().contains(&version) {
            assert!(started.elapsed() < Duration::from_secs(30), "no answer from version {version}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_served(1);
    // Every plugin on the build it serves from in the long run (a fresh
    // compile cache: the optimized builds are being made in the background).
    let settled = Instant::now();
    while !all_settled(&server, &compiler) {
        assert!(settled.elapsed() < Duration::from_secs(120), "optimized builds not done in 120 s: {}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The clients' pace with nothing changing, to compare with their pace
    // while versions land.
    let rate =
        |from: usize, since: Instant| (finished.load(Ordering::Relaxed) - from) as f64 / since.elapsed().as_secs_f64();
    // Polling the plugin list as `wait_for` does, so every pace carries it.
    let pace_for_3s = || {
        let (from, start) = (finished.load(Ordering::Relaxed), Instant::now());
        while start.elapsed() < Duration::from_secs(3) {
            tagger_status(&server);
            std::thread::sleep(Duration::from_millis(2));
        }
        rate(from, start)
    };
    let quiet = pace_for_3s();
    let (swaps_from, swaps_start) = (finished.load(Ordering::Relaxed), Instant::now());
    // When each version became visible in the plugin list.
    let mut visible_at = vec![(1, Instant::now() - Duration::from_secs(3600))];
    let mut delays = Vec::new();
    for version in 2..=new_versions + 1 {
        if version == BROKEN_AFTER + 1 {
            let serving = tagger_status(&server)["sha256"].clone();
            let broken = tagger(BROKEN);
            land(&file, &broken[..broken.len() / 2], false);
            wait_for(&server, "the broken file's error", |t| t["last_error"].is_string());
            let status = tagger_status(&server);
            assert_eq!(status["sha256"], serving, "the previous version keeps serving");
            assert_eq!(status["status"], "error");
            assert!(status["failed_reloads"].as_u64().unwrap() >= 1, "{status}");
            std::thread::sleep(Duration::from_millis(300));
        }
        let bytes = tagger(version);
        let sha = hex::encode(Sha256::digest(&bytes));
        let landed = Instant::now();
        land(&file, &bytes, version % 2 == 0);
        wait_for(&server, &format!("version {version}"), |t| t["sha256"] == sha.as_str());
        // Seen now: from here on, every request must get this version.
        let seen = Instant::now();
        visible_at.push((version, seen));
        delays.push(seen - landed);
        assert_eq!(tagger_status(&server)["status"], "ok", "a good version clears the error");
        wait_served(version);
    }
    let swapping = rate(swaps_from, swaps_start);
    // The last version's optimized build is made in this window.
    let after = pace_for_3s();
    stop.store(true, Ordering::Relaxed);
    let answers: Vec<Answer> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();

    // Figures only: how fast a version becomes visible (settling, compiling,
    // a smoke call) is measured by the benchmark, never asserted, as these
    // machines are shared and noisy.
    let mut sorted = delays.clone();
    sorted.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!("{} answers; new versions visible after {delays:?}", answers.len());
    eprintln!("answers/s while versions land: {swapping:.1}, with none landing: {quiet:.1} ({:.3}x)", swapping / quiet);
    eprintln!("answers/s in the 3 s after the last version: {after:.1} ({:.3}x)", after / quiet);
    eprintln!(
        "reload visibility over {} versions: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        sorted.len(),
        ms(percentile(&sorted, 0.5)),
        ms(percentile(&sorted, 0.9)),
        ms(sorted[sorted.len() - 1]),
    );
    let mut served = BTreeSet::new();
    for answer in &answers {
        assert_eq!(answer.status, "HTTP/1.1 200 OK", "a request failed during reloads: {}", answer.body);
        assert!(!answer.body.contains("\"error\""), "a stream failed during reloads: {}", answer.body);
        let tags = tags(&answer.body);
        assert_eq!(tags.len(), 1, "an answer mixes versions {tags:?}: {}", answer.body);
        let version = *tags.first().unwrap();
        assert_ne!(version, BROKEN, "the broken file never served");
        // A request that started after a version was visible ran that version or a later one.
        let newest_then = visible_at.iter().filter(|(_, at)| *at <= answer.started).map(|(v, _)| *v).max().unwrap();
        assert!(version >= newest_then, "started after v{newest_then} was visible, but ran v{version}");
        served.insert(version);
    }
    assert_eq!(served, (1..=new_versions + 1).collect(), "every version served answers");
    let log = server.log();
    assert_eq!(log.matches("model loaded").count(), 1, "the model was loaded more than once: {log}");
    // The broken file is reported (a good file caught half-written may be too).
    assert!(log.contains("plugin not loaded"), "the broken file is reported in the log: {log}");
}
