//! The production layer as operators run it: a key made with `kiln keys
//! create` admitting requests to `kiln serve`, readiness after the warm-up,
//! and a SIGTERM that lets an open stream finish.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::serve::Server;
use crate::{kiln, run, stderr, stdout};

#[test]
fn a_key_from_kiln_keys_create_admits_requests_and_nothing_else_does() {
    let out = run(kiln().args(["keys", "create", "--name", "app", "--scope", "generate"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let key = stdout(&out).trim().to_string();
    assert!(key.starts_with("kiln-") && key.len() == 69, "{key}");
    let entry = stderr(&out);
    let entry = &entry[entry.find("[[keys]]").expect("the config entry is printed")..];
    assert!(!entry.contains(&key), "the config holds the hash, never the key");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(&config, entry).unwrap();
    let server = Server::start_with(&["--config", config.to_str().unwrap()], "warn", &[]);
    let body = r#"{"prompt": "Hi", "max_tokens": 4}"#;
    let (status, answer) = server.request("POST", "/v1/generate", body);
    assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{answer}");
    let bearer = format!("Bearer {key}");
    let (status, answer) = server.request_with("POST", "/v1/generate", &[("Authorization", &bearer)], body);
    assert_eq!(status, "HTTP/1.1 200 OK", "{answer}");
    let (status, _) = server.request_with("GET", "/v1/plugins", &[("X-API-Key", &key)], "");
    assert_eq!(status, "HTTP/1.1 403 Forbidden", "a generate key is not an admin key");
    let (status, _) = server.request("GET", "/health", "");
    assert_eq!(status, "HTTP/1.1 200 OK", "probes need no key");
}

#[test]
fn without_keys_the_server_refuses_to_start_unless_told_to_run_open() {
    let out = run(kiln().args(["serve", "--port", "0"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--insecure-no-auth"), "{}", stderr(&out));
}

#[test]
fn sigterm_mid_stream_lets_the_stream_finish_then_exits_cleanly() {
    let mut server = Server::start_with(&["--insecure-no-auth"], "warn", &[]);
    let started = Instant::now();
    loop {
        if server.request("GET", "/ready", "").0 == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let body = r#"{"prompt": "Tell me about rivers.", "max_tokens": 48, "ignore_eos": true, "temperature": 0}"#;
    let mut socket = server.send("POST", "/v1/generate/stream", body);
    let mut first = [0u8; 4096];
    let n = socket.read(&mut first).unwrap();
    assert!(n > 0);
    let status = std::process::Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let mut rest = String::new();
    socket.read_to_string(&mut rest).unwrap();
    let text = String::from_utf8_lossy(&first[..n]).into_owned() + &rest;
    assert!(text.contains("data: [DONE]"), "the stream was cut: {text}");
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    let exit = server.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "exit status {exit:?}");
}
