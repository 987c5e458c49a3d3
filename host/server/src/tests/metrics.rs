//! `/metrics`: what a scrape shows after some traffic, checked with
//! Prometheus' own linter.

use std::io::Write;
use std::process::{Command, Stdio};

use axum::http::StatusCode;
use serde_json::json;

use super::*;

#[tokio::test]
async fn metrics_count_requests_tokens_and_cache_and_pass_promtool() {
    let app = TestApp::real().build();
    let body = json!({"prompt": "Hello", "max_tokens": 3, "temperature": 0});
    post(&app, "/v1/generate", body.clone()).await;
    post(&app, "/v1/generate", body).await;
    get(&app, "/v1/models/nope").await;
    let scrape = get(&app, "/metrics").await;
    assert_eq!(scrape.status, StatusCode::OK);
    assert!(scrape.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = String::from_utf8(scrape.body.to_vec()).unwrap();
    for needle in [
        r#"kiln_http_requests_total{route="/v1/generate",method="POST",status="200"}"#,
        r#"route="/v1/models/{*id}",method="GET",status="404""#,
        "kiln_http_request_duration_seconds_bucket",
        "kiln_time_to_first_token_seconds_bucket",
        "kiln_generated_tokens_total",
        "kiln_queue_depth",
        "kiln_running_sequences",
        r#"kiln_kv_cache_bytes{held_by="running"}"#,
        r#"kiln_kv_cache_bytes{held_by="prefix_cache"}"#,
        "kiln_cache_hits_total",
        r#"kiln_plugin_calls_total{plugin="default-sampler"}"#,
        "kiln_process_resident_memory_bytes",
    ] {
        assert!(text.contains(needle), "{needle} is missing from:\n{text}");
    }
    lint(&text);
}

/// `promtool check metrics` (Debian's `prometheus` package; `.ci/run`
/// installs it). Outside CI a machine without it skips this check, loudly.
fn lint(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED the promtool check: {e} (apt-get install prometheus)");
            return;
        }
        Err(e) => panic!("promtool is needed in CI: {e}"),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}");
}
