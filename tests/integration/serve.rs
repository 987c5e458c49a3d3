//! `kiln serve` as users run it: the real binary on a real socket, and the
//! official `openai` Python client against it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use crate::kiln;

/// A running `kiln serve`, killed on drop.
pub(crate) struct Server {
    child: Child,
    pub address: String,
    log: tempfile::NamedTempFile,
    /// The task store's folder, unless the test gave its own.
    _data: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&["--insecure-no-auth"], "warn", &[])
    }

    /// `kiln serve` with extra arguments and environment, logging at `log_level`.
    pub(crate) fn start_with(args: &[&str], log_level: &str, env: &[(&str, &Path)]) -> Server {
        let log = tempfile::NamedTempFile::new().unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut child = kiln()
            .args(["serve", "--port", "0"])
            // A test that sets its own context says so.
            .args(if args.contains(&"--max-context") { &[][..] } else { &["--max-context", "2048"][..] })
            .args(args)
            .env("RUST_LOG", log_level)
            .env("KILN_DATA_DIR", data.path())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("starting kiln serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(address.to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(address) => Server { child, address, log, _data: data },
            Err(_) => {
                let _ = child.kill();
                panic!("kiln serve did not start: {}", std::fs::read_to_string(log.path()).unwrap_or_default());
            }
        }
    }

    /// What the server has logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Sends one request on a fresh connection; returns the socket to read from.
    pub(crate) fn send(&self, method: &str, path: &str, body: &str) -> TcpStream {
        self.send_with(method, path, &[], body)
    }

    /// [`Server::send`] with extra headers.
    pub(crate) fn send_with(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> TcpStream {
        let mut socket = TcpStream::connect(&self.address).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            self.address,
            body.len()
        );
        socket.write_all(head.as_bytes()).unwrap();
        socket.write_all(body.as_bytes()).unwrap();
        socket
    }

    /// Status line and body of a whole (non-streamed) answer.
    pub(crate) fn request(&self, method: &str, path: &str, body: &str) -> (String, String) {
        self.request_with(method, path, &[], body)
    }

    /// [`Server::request`] with extra headers.
    pub(crate) fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (String, String) {
        let mut text = String::new();
        self.send_with(method, path, headers, body).read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        (head.lines().next().unwrap().to_string(), body.to_string())
    }
}

impl Server {
    /// `kill -9`: no chance to clean up.
    pub(crate) fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit on its own; its exit status.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < limit, "kiln serve did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_answers_the_guides_generate_over_http() {
    let server = Server::start();
    let (status, body) = server.request("POST", "/v1/generate", r#"{"prompt": "What is 2+2?", "max_tokens": 16}"#);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(!body["text"].as_str().unwrap().is_empty());
    assert_eq!(body["model"], "SmolLM2-135M-Instruct.Q4_1");
    let (status, body) = server.request("POST", "/v1/generate", r#"{"prompt": "x", "temperature": -1}"#);
    assert_eq!(status, "HTTP/1.1 400 Bad Request", "{body}");
}

#[test]
fn serve_streams_tokens_one_by_one_as_they_are_generated() {
    let server = Server::start();
    let body = r#"{"prompt": "Tell me about rivers.", "max_tokens": 40, "ignore_eos": true, "temperature": 0}"#;
    let mut socket = server.send("POST", "/v1/generate/stream", body);
    let (mut seen, mut arrivals) = (Vec::new(), Vec::new());
    let mut buf = [0u8; 8192];
    loop {
        let n = socket.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        let events = buf[..n].windows(6).filter(|w| w == b"data: ").count();
        arrivals.push((Instant::now(), events));
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(seen).unwrap();
    assert!(text.contains("text/event-stream"), "{text}");
    let events: usize = arrivals.iter().map(|(_, n)| n).sum();
    // 40 tokens (a token may complete no character and send nothing), the finish, [DONE].
    assert!((20..=42).contains(&events), "{events} events: {text}");
    assert_eq!(text.rfind("data: "), text.find("data: [DONE]"), "the last event is [DONE]: {text}");
    // Events come as they are generated, not in one burst at the end.
    let reads_with_events = arrivals.iter().filter(|(_, n)| *n > 0).count();
    assert!(reads_with_events >= 10, "events arrived in only {reads_with_events} reads");
    let spread = arrivals.last().unwrap().0 - arrivals.first().unwrap().0;
    assert!(spread > Duration::from_millis(20), "all events within {spread:?}");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a client script from tests/clients with `python3`, after installing
/// the packages of tests/clients/requirements.txt from the package index if
/// they are missing; returns its stdout, failing the test with its output if
/// it fails.
fn run_client(script: &str, url: &str) -> String {
    let clients = install_clients();
    let out = Command::new("python3").arg(clients.join(script)).arg(url).output().expect("running python3");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} failed:\n{stdout}{stderr}");
    stdout.into_owned()
}

/// tests/clients, its requirements installed from the package index if missing.
fn install_clients() -> PathBuf {
    let clients = repo_root().join("tests/clients");
    // Once per test run, and never two pip installs at the same time.
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let installed = Command::new("python3")
            .args(["-c", "import openai, openapi_spec_validator, schemathesis, jsonschema"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            let requirements = clients.join("requirements.txt");
            let status = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(&requirements)
                .status()
                .expect("python3 is needed for the client tests");
            assert!(status.success(), "pip install -r {} failed", requirements.display());
        }
    });
    clients
}

#[test]
fn the_official_openai_python_client_works_against_kiln_serve() {
    let server = Server::start();
    let stdout = run_client("openai_client.py", &format!("http://{}/v1", server.address));
    assert!(stdout.contains("checks passed"), "{stdout}");
}

#[test]
fn json_schema_answers_validate_for_two_hundred_random_schemas() {
    let server = Server::start();
    let stdout = run_client("json_schema_property.py", &format!("http://{}/v1", server.address));
    assert!(stdout.contains("answers validated"), "{stdout}");
    eprintln!("{stdout}");
}

#[test]
fn the_served_openapi_document_is_valid_openapi_3_1() {
    let server = Server::start();
    let stdout = run_client("openapi_check.py", &format!("http://{}", server.address));
    assert!(stdout.contains("valid"), "{stdout}");
}

#[test]
fn schemathesis_finds_no_failure_anywhere_in_the_api() {
    // A short context keeps every generation it asks for short.
    let server = Server::start_with(&["--insecure-no-auth", "--max-context", "128"], "warn", &[]);
    let clients = install_clients();
    // Every check, every operation (plugin administration included: the
    // tests run on loopback, which may administer), a few examples each
    // and a fixed seed, so a failure reproduces.
    // It keeps a cache of what it found in its working folder: a scratch one.
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .current_dir(scratch.path())
        .args(["-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"])
        .arg("--config-file")
        .arg(clients.join("schemathesis.toml"))
        .args(["run", &format!("http://{}/openapi.json", server.address)])
        .args(["--checks", "all", "--max-examples", "5", "--seed", "7", "--request-timeout", "120", "--no-color"])
        .output()
        .expect("running schemathesis");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found failures:\n{stdout}{stderr}");
}
