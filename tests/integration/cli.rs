//! The `kiln` command line: generate, bench, pull, and its errors.

use crate::{kiln, model_path, run, stderr, stdout};

fn generate(prompt: &str, extra: &[&str]) -> std::process::Output {
    let model = model_path();
    let mut cmd = kiln();
    cmd.args(["generate", "--model"]).arg(&model).args(extra).arg(prompt);
    run(&mut cmd)
}

#[test]
fn greedy_generate_answers_coherently_and_identically_every_run() {
    let args = ["--temperature", "0", "--max-tokens", "64"];
    let first = generate("What is 2+2?", &args);
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(text.contains('4'), "expected the answer 4, got {text:?}");
    // Only the generated text reaches stdout: no template markup, no log lines.
    assert!(!text.contains("<|im_") && !text.contains("INFO") && !text.contains("assistant\n"), "{text:?}");
    for _ in 0..2 {
        assert_eq!(stdout(&generate("What is 2+2?", &args)), text);
    }
}

#[test]
fn seeded_sampling_repeats_and_the_seed_matters() {
    let run = |seed: &str| {
        stdout(&generate("Invent a name for a cat.", &["--temperature", "1.0", "--max-tokens", "24", "--seed", seed]))
    };
    let a = run("5");
    assert!(!a.trim().is_empty());
    assert_eq!(a, run("5"));
    assert_ne!(a, run("6"));
}

#[test]
fn max_tokens_bounds_the_output() {
    let out = generate("Write a long essay about rivers.", &["--temperature", "0", "--max-tokens", "5", "--raw"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.trim().is_empty() && text.split_whitespace().count() <= 6, "{text:?}");
}

#[test]
fn a_missing_model_file_is_a_clear_error() {
    let out = run(kiln().args(["generate", "--model", "/nonexistent/model.gguf", "hi"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/nonexistent/model.gguf"), "{}", stderr(&out));
}

#[test]
fn a_file_that_is_not_gguf_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"definitely not a gguf file").unwrap();
    let out = run(kiln().args(["generate", "--model"]).arg(&bad).arg("hi"));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("bad.gguf") && err.contains("GGUF"), "{err}");
}

#[test]
fn pull_with_an_unreachable_index_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        run(kiln().arg("pull").env("KILN_CACHE_DIR", dir.path()).env("PIP_INDEX_URL", "http://127.0.0.1:9/simple"));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("127.0.0.1:9") && err.contains("--model"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).map(|d| d.count()).unwrap_or(0), 0, "left files behind");
}

#[test]
fn bench_json_reports_every_figure() {
    let _alone = crate::exclusive();
    let model = model_path();
    let out = run(kiln().args(["bench", "--json", "--runs", "1", "--model"]).arg(&model));
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
    for key in ["prefill_tps", "decode_tps", "decode_tps_4", "decode_tps_16", "ttft_ms"] {
        let v = report[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {report}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
}

/// Answers like the Hub for one repository holding `file`: the tree API
/// (with its LFS sha256) and its `resolve` URL. Returns the endpoint.
fn local_hub(repo: &'static str, name: &'static str, file: std::path::PathBuf) -> String {
    use sha2::Digest;
    use std::io::{BufRead, BufReader, Write};
    let data = std::fs::read(&file).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&data));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request_line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut request_line).unwrap();
            while reader.read_line(&mut String::new()).map(|n| n > 2).unwrap_or(false) {}
            let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let body = if path == format!("/api/models/{repo}/tree/main?recursive=true") {
                serde_json::to_vec(&serde_json::json!([
                    {"type": "file", "path": name, "size": data.len(), "lfs": {"oid": sha, "size": data.len()}}
                ]))
                .unwrap()
            } else if path == format!("/{repo}/resolve/main/{name}") {
                data.clone()
            } else {
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            };
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
        }
    });
    endpoint
}

#[test]
fn a_hub_model_is_pulled_listed_run_offline_and_removed() {
    let cache = tempfile::tempdir().unwrap();
    let name = "SmolLM2-135M-Instruct.Q4_1.gguf";
    let hub = local_hub("acme/smol-GGUF", name, model_path());
    let spec = format!("hf:acme/smol-GGUF/{name}");
    let kiln_in_cache = || {
        let mut cmd = kiln();
        cmd.env("KILN_CACHE_DIR", cache.path()).env("HF_ENDPOINT", &hub).env_remove("HF_TOKEN");
        cmd
    };
    let out = run(kiln_in_cache().args(["pull", "hf:acme/smol-GGUF", "--quant", "q4_1"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).trim().ends_with(&format!("hf/acme/smol-GGUF/{name}")), "{}", stdout(&out));
    let listed = stdout(&run(kiln_in_cache().arg("list")));
    assert!(listed.contains(&spec), "{listed}");
    // Cached and named: runs with the Hub gone.
    let offline = || {
        let mut cmd = kiln_in_cache();
        cmd.env("HF_ENDPOINT", "http://127.0.0.1:9");
        cmd
    };
    let out = run(offline().args(["generate", "--temperature", "0", "--max-tokens", "4", "--model", &spec, "Hi"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).trim().is_empty());
    let out = run(kiln_in_cache().args(["rm", &spec]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&run(kiln_in_cache().arg("list"))).contains(&spec));
    // Not a Hub name: a clear refusal.
    let out = run(kiln_in_cache().args(["pull", "acme/smol-GGUF"]));
    assert!(!out.status.success() && stderr(&out).contains("hf:ORG/REPO"), "{}", stderr(&out));
}
