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

/// A new key from `kiln keys create`: the key, and its `[[keys]]` entry.
fn new_key(name: &str) -> (String, String) {
    let out = run(kiln().args(["keys", "create", "--name", name, "--scope", "generate"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let entry = stderr(&out);
    (stdout(&out).trim().to_string(), entry[entry.find("[[keys]]").expect("the config entry is printed")..].to_string())
}

/// Asks `GET /v1/models` with `key` until it answers `status`.
fn until_status(server: &Server, key: &str, status: &str, what: &str) {
    let started = Instant::now();
    loop {
        let (got, _) = server.request_with("GET", "/v1/models", &[("X-API-Key", key)], "");
        if got == status {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{what}: still {got}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn keys_reload_when_the_config_changes_or_on_sighup_and_a_bad_file_keeps_the_old_ones() {
    let ((kept, kept_entry), (revoked, revoked_entry)) = (new_key("kept"), new_key("revoked"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(&config, format!("{kept_entry}\n{revoked_entry}")).unwrap();
    let server = Server::start_with(&["--config", config.to_str().unwrap()], "info", &[]);
    until_status(&server, &revoked, "HTTP/1.1 200 OK", "both keys admitted at start");

    std::fs::write(&config, &kept_entry).unwrap();
    until_status(&server, &revoked, "HTTP/1.1 401 Unauthorized", "a key dropped from the file is refused");
    until_status(&server, &kept, "HTTP/1.1 200 OK", "the kept key still admitted");

    std::fs::write(&config, "[[keys]]\nname = \"half-written").unwrap();
    let started = Instant::now();
    while !server.log().contains("API keys not reloaded") {
        assert!(started.elapsed() < Duration::from_secs(30), "a bad file is not reported: {}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    until_status(&server, &kept, "HTTP/1.1 200 OK", "a bad file keeps the keys in force");

    // SIGHUP re-reads at once, whatever the file's content was last time.
    std::fs::write(&config, format!("{kept_entry}\n{revoked_entry}")).unwrap();
    let hup = std::process::Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
    assert!(hup.success());
    until_status(&server, &revoked, "HTTP/1.1 200 OK", "the key restored to the file is admitted again");
    assert!(server.log().contains("API keys reloaded"), "{}", server.log());
}
